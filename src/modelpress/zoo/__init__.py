"""The built-in model zoo: the models modelpress registers itself, their data, weights, and the zoo report.

What lives here:

* ``models``: the seed MLP (``mlp``) and the digits CNN (``digits_cnn``), the CPU-independent seeded
  init and inputs, the zoo-only training loop (``train_classifier``, ``train_builtin_digits``) and
  ``load_shipped_weights``;
* ``text``: the key-majority LSTM/GRU classifiers (``seq_lstm``, ``seq_gru``) and all-MiniLM-L6-v2;
* ``builtin_weights``: the shipped weights files and the built-in content id (torch-free: the producer
  imports it);
* ``report``: the zoo report (every registered model × recipes, ``modelpress report --zoo``) and
  ``distill_compare``, the distilled-vs-alone student comparison it can append;
* ``data/``: package data (the trained weights with their sidecars, the bundled sentences).

The models are registered as entry points (group ``modelpress.models``, ``pyproject.toml``); the pipeline
and ``optimize.artifacts`` reach them only through the registered source
(``modelpress.optimize.sources.registered``), never by importing this package.

What it may import: torch (and numpy, scikit-learn, transformers for its models), ``optimize.spec``,
``optimize.weights``, the registered-source API, and the techniques/measurement modules for training and
the report. Never Celery, the job database, or the pipeline's internals. This ``__init__`` imports
nothing, so ``modelpress.zoo.builtin_weights`` stays torch-free.
"""
