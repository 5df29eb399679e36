"""The object store: where every artifact of a job lives (run folders, checkpoints, model
versions, serve status), reached over the overlay, never through a shared disk.

`server.py` runs the embedded S3 server (JuiceFS's gateway) on the hub's overlay address;
`client.py` is the coordinator's S3 client (root key); `access.py` issues each lease an
access key limited to the prefixes it needs; `layout.py` names the keys (pure).
"""
