class DatasetError(Exception):
    """Data that is missing, corrupt or inconsistent; the message names the file."""
