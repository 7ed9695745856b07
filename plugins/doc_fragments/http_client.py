# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name


class ModuleDocFragment:
    """The HTTP client options of the modules that talk to an HTTP API (module_utils/_argspec.py)."""

    DOCUMENTATION = r"""
options:
  timeout:
    description:
      - Seconds one HTTP request may take.
      - This option and the ones below have the names and meaning of the options of M(ansible.builtin.uri).
    type: float
    default: 10
  validate_certs:
    description:
      - Verify the TLS certificate of an https:// URL.
      - Set to V(false) only for a self-signed certificate you cannot give in O(ca_path).
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA certificates that sign the server's certificate. When set, only these CAs are
        trusted, not the system's.
    type: path
  client_cert:
    description:
      - PEM file of the client certificate, for a server that authenticates clients by certificate (mTLS).
      - It may hold the private key too; otherwise give O(client_key).
    type: path
  client_key:
    description:
      - PEM file of the private key of O(client_cert).
    type: path
  url_username:
    description:
      - User name for HTTP basic authentication (digest too, unless O(force_basic_auth=true)).
    type: str
  url_password:
    description:
      - Password of O(url_username).
    type: str
  force_basic_auth:
    description:
      - Send the basic authentication header with the first request instead of waiting for the server's
        401 challenge. Proxies in front of Prometheus and Alertmanager often never send one.
    type: bool
    default: false
  use_proxy:
    description:
      - Use the proxy from the C(http_proxy)/C(https_proxy)/C(no_proxy) environment variables.
    type: bool
    default: true
  headers:
    description:
      - Extra request headers, for example C(Authorization) for a server behind an authenticating proxy.
      - The value of a header whose name contains C(auth), C(token), C(secret), C(password), C(cookie) or C(key)
        (case-insensitive) is a credential, masked wherever it would appear in the result, the invocation
        included. Other headers stay readable.
    type: dict
    default: {}
"""
