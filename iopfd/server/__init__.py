"""The trio daemon: listener, connections, hardware task, systemd glue."""
