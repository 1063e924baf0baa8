"""The checkpoint engine behind every ``ShelfCheckpoint``: options, policy, writer, and the
torch training state the torch-based adapters share."""
