"""The slim backend: datasets, training, int8 compiling and deployment through bridges.

The web process (``backend_stub.app``) never imports TensorFlow: training and conversion run in
worker processes (``python -m backend_stub.worker``). Everything -- images, trained models,
curves, compiled artifacts -- lives in one database (SQLite by default, PostgreSQL by URL).
"""

__version__ = "0.1.0"
