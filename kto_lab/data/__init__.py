"""Binary-feedback data: record tables, converters, gamma sampling.

    from kto_lab.data.records import load_records, load_pairs, write_records
    from kto_lab.data.converters import pickapic_to_records, pickapic_to_pairs, threshold_records, label_with_function
    from kto_lab.data.sampler import GammaSampler
    from kto_lab.data.folder import folder_to_records, scan_folder     # a folder of images -> records + a queue
    from kto_lab.data.decisions import DecisionLog                     # the labeling tools' append-only log
"""
