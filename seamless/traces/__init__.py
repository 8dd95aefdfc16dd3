"""Traces: the Redis schema, the codec of a turn, the store, the merge of turns into sequences, the export."""
