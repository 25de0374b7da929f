"""Experiments built on the training loop: the evidence grid (`grid`), the embedded demo (`demo`) and their figures
(`figures`). They import from every room below them; nothing below imports them."""
