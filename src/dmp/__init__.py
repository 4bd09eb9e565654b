"""dmp: the DNS Mesh Protocol (federated, end-to-end encrypted messaging over DNS)."""

__version__ = "0.1.0"
