"""Keras models for the trainer and the reference server, in the images that carry Keras and its backend.

`mfl_keras.classifier.KerasDenseClassifier` (the trainer's estimator `keras_dense`) is a scikit-learn
classifier around a Keras 3 network. Importing this package loads no Keras: Keras (and JAX, its backend
here) is imported when a network is built or unpickled, so the project wheel stays importable in every
image while only `mfl-trainer-keras` and `mfl-server-keras` install Keras (requirements/keras.txt).
"""
