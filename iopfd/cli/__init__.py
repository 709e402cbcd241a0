"""iopfctl, the admin command line for iopfd."""
