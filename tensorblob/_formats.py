"""The file formats ``export`` and ``import`` know: their names, suffixes, default tensor name.

Pure data, so that the command line can list them without importing torch.
"""

EXPORT_FORMATS = ("npy", "safetensors")
IMPORT_FORMATS = ("npy", "safetensors", "tensorblob-0.3")
SUFFIXES = {".npy": "npy", ".safetensors": "safetensors"}
DEFAULT_NAME = "data"  # the tensor's name in a .safetensors file
