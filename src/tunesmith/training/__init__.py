"""Training a stage: trl trainers for continued pretraining, SFT and the preference methods
(DPO, ORPO, SimPO, KTO), the rows trl sees, checkpoints, curves, tracking backends, and launching on several
processes or nodes. Above judge and generation so that training data made from the policy's own answers
may use them.

Modules: train, train_data, preference, checkpoints, curves, tracking, launcher, distributed, on_policy."""
