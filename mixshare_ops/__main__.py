"""``python -m mixshare_ops``: says which backends this installation has."""

import json

import torch

import mixshare_ops

info = mixshare_ops.backend_info()
info["torch"] = torch.__version__
info["cuda_available"] = torch.cuda.is_available()
print(json.dumps(info, indent=2))
