"""Training workloads that run inside a lease's Ray cluster: LoRA (Ray Train + DeepSpeed +
PEFT) and pipeline-parallel training, plus the data and tiny-model helpers they share."""
