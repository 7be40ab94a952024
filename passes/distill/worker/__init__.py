"""The distillation worker: trains a student ONNX graph against teacher outputs with
onnxruntime-training, inside graphc's isolated training environment.

Why a separate program: onnxruntime-training (PyPI ``onnxruntime-training-cpu`` 1.19.2, the
last release) installs the module name ``onnxruntime`` and conflicts with the normal
``onnxruntime`` graphc uses, so it lives in its own venv (``graphc setup training``) and
runs in a subprocess. This package is executed by its folder's path with that venv's Python
(``python <graphc.passes.distill>/worker WORKDIR``: ``graphc.training_env.WORKER``, entry
point ``__main__``) and imports only the standard library, numpy, onnx and
onnxruntime(-training), never graphc (which is not installed there). Its modules import one
another relatively, so the same files also serve graphc as ``graphc.passes.distill.worker``
(``training_graph.trainable_names``; the tests read the numpy parts). Files are the
contract, all in WORKDIR (``protocol``).

It applies rules 2-6 of ``graphc.passes.distill`` (the numbers there), each stated in the
module applying it:

- rule 2, the loss: ``losses``;
- rule 3, what is trained: ``training_graph.trainable_names``;
- rule 4, training: the training copy of the student ``training_graph``, the loop and its
  session ``loop``, ``mask`` batches ``batches``;
- rule 5, evaluation and the best epoch: ``loop``;
- rule 6, resume from the per-epoch checkpoint: ``loop``.
"""
