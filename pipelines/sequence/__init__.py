"""The image-to-sequence task of `keras-vit train --task sequence`: read text from images.

Modules, one job each:

* `vocab`: `CharVocabulary` (pad 0, start 1, end 2, then characters), `vocab.json`;
* `sources`: tfds `(Image, Text)` datasets and folders with `labels.csv`, checked;
* `data`: `load_sequence_data`: vocabulary from train, encoding, tf.data pipelines;
* `config`: `SequenceConfig`, the preset, option checks;
* `fit`: run folder plan, model, recipe, teacher-forced fit;
* `metrics`: exact-sequence accuracy, character error rate;
* `evaluation`: greedy / beam decoding of the test split, summary;
* `attention`: cross-attention maps per generated token and their figure;
* `job`: `train_sequence`, the whole job;  `cli`: its command line.

The export lives with the other serving code: `pipelines.serving.sequence`.
"""
