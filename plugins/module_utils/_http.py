# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""HTTP requests with ansible-core's ``ansible.module_utils.urls`` and the ``ansible.builtin.url`` options.

Private to this collection: not a public API, it may change in any release.

The one HTTP client of the collection's modules: the Prometheus and Alertmanager APIs (_prometheus) and the
http probes (_probe_checks). The TLS context (CA bundle, client certificate, validation), the redirect policy
and the basic-auth header come from ``ansible.module_utils.urls``; the options keep its names (url_username,
url_password, force_basic_auth, client_cert, client_key, ca_path, use_proxy, validate_certs, timeout).

The opener is built here and opened directly rather than through ``Request.open``, because ``Request.open``
installs its opener process-wide (``urllib.request.install_opener``) before it opens the request: probes that
run in threads with different settings then pick up each other's opener (a redirect followed that should not
be, another probe's TLS settings). The backup program keeps its own standard-library client: it runs on the
host without Ansible.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import http.client
import socket
import ssl
import threading
import typing as t
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ansible.module_utils.urls import HTTPRedirectHandler, basic_auth_header, make_context

DEFAULT_TIMEOUT = 10.0


# A request header whose name holds one of these words carries a credential (Authorization, X-Api-Key,
# X-Auth-Token, Cookie, ...): its value is kept out of every module result, the invocation included.
SECRET_HEADER_WORDS = ("auth", "token", "secret", "password", "cookie", "key")


def secret_header_values(headers: dict[str, t.Any] | None) -> set[str]:
    """The values of the credential headers in headers, for ``AnsibleModule.no_log_values``.

    ``headers`` options are not ``no_log`` as a whole: that would mask every other header's value (a ``Host``
    such as ``localhost``) wherever it appears in the result.
    """
    return {
        str(value)
        for name, value in (headers or {}).items()
        if value not in (None, "") and any(word in str(name).lower() for word in SECRET_HEADER_WORDS)
    }


class HttpConfigError(ValueError):
    """The client settings cannot be used (an unreadable CA bundle or client certificate)."""


@dataclass
class HttpSettings:
    """Where and how to send requests: a base URL and the ``ansible.builtin.url`` options."""

    url: str
    timeout: float = DEFAULT_TIMEOUT
    validate_certs: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    use_proxy: bool = True
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    url_username: str | None = None
    url_password: str | None = None
    force_basic_auth: bool = False
    follow_redirects: bool = True
    http_agent: str | None = None

    def base(self) -> str:
        return self.url.rstrip("/")

    @classmethod
    def from_params(cls, params: dict[str, t.Any]) -> HttpSettings:
        """The settings of a module whose spec includes ``_argspec.http_argument_spec()``."""
        return cls(
            url=params["url"],
            timeout=params["timeout"],
            validate_certs=params["validate_certs"],
            headers={str(k): str(v) for k, v in (params["headers"] or {}).items()},
            use_proxy=params["use_proxy"],
            ca_path=params["ca_path"],
            client_cert=params["client_cert"],
            client_key=params["client_key"],
            url_username=params["url_username"],
            url_password=params["url_password"],
            force_basic_auth=params["force_basic_auth"],
        )


_CONTEXTS: dict[tuple[t.Any, ...], ssl.SSLContext] = {}
_CONTEXT_LOCK = threading.Lock()


def tls_context(settings: HttpSettings) -> ssl.SSLContext:
    """ansible's TLS context for these settings, shared per setting: loading the CA store takes tens of ms."""
    key = (settings.validate_certs, settings.ca_path, settings.client_cert, settings.client_key)
    with _CONTEXT_LOCK:
        if key not in _CONTEXTS:
            try:
                _CONTEXTS[key] = make_context(
                    cafile=settings.ca_path,
                    validate_certs=settings.validate_certs,
                    client_cert=settings.client_cert,
                    client_key=settings.client_key,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise HttpConfigError(
                    "cannot use the TLS files (ca_path=%s, client_cert=%s, client_key=%s): %s"
                    % (settings.ca_path, settings.client_cert, settings.client_key, exc)
                ) from exc
        return _CONTEXTS[key]


def _opener(settings: HttpSettings, url: str) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = []
    if url.lower().startswith("https:") or settings.follow_redirects:
        handlers.append(urllib.request.HTTPSHandler(context=tls_context(settings)))
    if not settings.use_proxy:
        handlers.append(urllib.request.ProxyHandler({}))
    # "none" answers a redirect with its own 3xx status; "urllib2" follows it like the standard library.
    handlers.append(HTTPRedirectHandler("urllib2" if settings.follow_redirects else "none"))
    if settings.url_username and not settings.force_basic_auth:
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, url, settings.url_username, settings.url_password or "")
        handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
        handlers.append(urllib.request.HTTPDigestAuthHandler(passwords))
    return urllib.request.build_opener(*handlers)


def open_http(
    settings: HttpSettings,
    method: str,
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> t.Any:
    """Send one request; returns the response for every HTTP status (an error status is an answer too).

    ``headers`` replaces ``settings.headers`` for this request when given. The response has ``status``,
    ``headers``, ``read()`` and ``close()``. Raises HttpConfigError for unusable TLS files, and urllib's
    URLError, OSError or http.client.HTTPException when no answer came (see describe_error).
    """
    request = urllib.request.Request(url, data=data, method=method.upper())
    if settings.http_agent:
        request.add_header("User-Agent", settings.http_agent)
    if settings.url_username and settings.force_basic_auth:
        credentials = basic_auth_header(settings.url_username, settings.url_password)
        request.add_header("Authorization", credentials.decode("ascii"))
    for name, value in (settings.headers if headers is None else headers).items():
        request.add_header(name, value)
    try:
        return _opener(settings, url).open(request, timeout=settings.timeout)
    except urllib.error.HTTPError as exc:
        return exc


def response_socket(resp: t.Any) -> socket.socket | None:
    """The socket under a response (or under the HTTPError wrapping one), if reachable."""
    fp = getattr(resp, "fp", None)
    for candidate in (fp, getattr(fp, "fp", None)):
        sock = getattr(getattr(candidate, "raw", None), "_sock", None)
        if isinstance(sock, socket.socket):
            return sock
    return None


def describe_error(exc: BaseException, where: str, timeout: float) -> str:
    """Turn a failure to get an answer into words: refused, timed out, name resolution, TLS."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return describe_error(reason, where, timeout)
        return "cannot reach %s: %s" % (where, reason)
    if isinstance(exc, HttpConfigError):
        return str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out after %g s (%s)" % (timeout, where)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by %s: nothing listens there" % where
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name of %s: %s" % (where, exc.strerror or exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            "TLS certificate of %s not trusted: %s (fix the certificate, give its CA in ca_path, or set "
            "validate_certs: false for a self-signed one)" % (where, exc.verify_message or exc)
        )
    if isinstance(exc, ssl.SSLError):
        return "TLS error with %s: %s" % (where, exc)
    if isinstance(exc, http.client.RemoteDisconnected):
        return "%s closed the connection without an answer" % where
    if isinstance(exc, ConnectionResetError):
        return "connection reset by %s" % where
    if isinstance(exc, OSError) and exc.strerror:
        return "cannot reach %s: %s" % (where, exc.strerror)
    return "cannot reach %s: %s" % (where, exc)


# What open_http raises when no answer came.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException, urllib.error.URLError)

__all__ = [
    "DEFAULT_TIMEOUT",
    "SECRET_HEADER_WORDS",
    "TRANSPORT_ERRORS",
    "HttpConfigError",
    "HttpSettings",
    "describe_error",
    "open_http",
    "response_socket",
    "secret_header_values",
    "tls_context",
]
