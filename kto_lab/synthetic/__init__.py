"""The shapes world: a synthetic text-to-image task where alignment can be measured end to end.

* :mod:`.shapes`     captions and procedurally drawn 16x16 images of coloured shapes
* :mod:`.fidelity`   programmatic check that an image shows what its caption asks for
* :mod:`.users`      synthetic users (Diffusion-KTO appendix C): red lover, contrast lover
* :mod:`.base`       the base pipeline trained from scratch with the project's SD trainer
* :mod:`.evaluate`   sampling, measurements, the evaluation harness with a fidelity scorer
* :mod:`.experiment` the comparison of every method (and SPIN, :mod:`kto_lab.spin`)
* :mod:`.figures`    curves (paper Figure 7) and the comparison table (LoRA study Table 1)
* :mod:`.regimes`    data regimes for KTO vs DPO: imbalance, label noise, pairwise judgments
* :mod:`.sweep`      resumable sweeps over methods, beta / learning rate, regimes and seeds
* :mod:`.sweep_report` frontiers, the comparison over seeds, regime win rates (figures/kto_vs_dpo)
* :mod:`.cli`        ``kto-lab synthetic base | compare | figures | samples | sweep | sweep-report``
"""
