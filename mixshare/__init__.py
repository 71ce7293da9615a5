"""mixshare: MIMO, MixMo and MixShare ensembles in PyTorch, built on the ``mixshare_ops`` operators."""
