"""One RGB-D frame in, dense embeddings out: preprocessing, backends, postprocessing, pipeline.

`preprocess` prepares the network's inputs, `backends` run the network (torch, ONNX Runtime,
TensorRT) and export it, `postprocess` normalises embeddings and segments with text prototypes,
`pipeline` joins them around one backend (`pipeline_setup` builds it from a configuration), and
`visualization` colours embeddings, scores and labels for people to look at.
"""
