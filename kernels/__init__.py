"""Triton kernels and their launchers, installed as `fastvae.kernels`.

Each op module (reparam_kl.py, deconv_block.py) provides the backend interface of
fastvae/reference.py. Nothing here is imported by `import fastvae`.
"""
