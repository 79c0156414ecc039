"""Who is connecting: gateway-issued tokens and the checks that turn them into identities."""

from pathwarden.identity.authenticate import (
    Authenticator,
    AuthError,
    IssuedCertificate,
    IssueError,
)
from pathwarden.identity.ssh_ca import (
    CertificateLogin,
    LoginName,
    PresentedCertificate,
    SshCaError,
    SshCertificateAuthority,
    SshKeyError,
    parse_login_name,
)
from pathwarden.identity.tokens import (
    IssuedToken,
    SigningKeyError,
    TokenAuthority,
    TokenClaims,
    TokenError,
    token_ref_for,
)

__all__ = [
    "AuthError",
    "Authenticator",
    "CertificateLogin",
    "IssueError",
    "IssuedCertificate",
    "IssuedToken",
    "LoginName",
    "PresentedCertificate",
    "SigningKeyError",
    "SshCaError",
    "SshCertificateAuthority",
    "SshKeyError",
    "TokenAuthority",
    "TokenClaims",
    "TokenError",
    "parse_login_name",
    "token_ref_for",
]
