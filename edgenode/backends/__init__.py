"""Part runners: Keras (TensorFlow) and LiteRT. Each imports its runtime lazily."""
