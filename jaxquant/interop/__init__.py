"""Interchange with PyTorch-ecosystem checkpoints (no torch needed) and GGUF tensors.

    from jaxquant.interop import compressed_tensors, gptq_awq, gguf_tensors, formats
    ckpt = compressed_tensors.import_dir("llm-compressor-output/")   # or gptq_awq.import_dir
    params = ckpt.to_params()                                         # QArray kernels
    compressed_tensors.export_dir("out/", qparams, recipe=recipe)     # vLLM-servable
    formats.detect(path), formats.save(path, tree, recipe, format=...), formats.load(path)
"""
