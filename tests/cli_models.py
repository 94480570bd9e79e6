"""A registered subclassed model, for the CLI's "not functional" error."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="edgenode_tests")
class Doubler(keras.Model):
    def call(self, x):
        return x * 2.0
