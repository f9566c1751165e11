"""forge: the training benchmark — a loop whose bottleneck is data loading, so a cold and a
warm epoch through WarpDrive can be told apart. ``forge train``, ``forge compare``,
``forge gen-shards``; see docs/forge.md."""
