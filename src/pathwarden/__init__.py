"""pathwarden: an access gateway that sits in the data path of CI/CD pipelines."""

__version__ = "0.1.0"
