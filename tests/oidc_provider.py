"""A real OpenID Connect provider for the tests, built from Authlib's server parts (Flask).

It stands in for Microsoft Entra ID or Google Workspace: a discovery document, a JWKS
with a fresh RSA key, an authorization endpoint with a sign-in form (the browser test
types into it), the authorization code grant with PKCE (S256, required) and OpenID
Connect ID tokens (RS256, nonce required) carrying ``preferred_username``, ``name`` and
``groups``, and a userinfo endpoint.  It runs as its own process:

    python tests/oidc_provider.py --port PORT --config FILE

FILE (JSON): ``{"client_id", "client_secret", "redirect_uri", "users": {name: {"password",
"sub", "preferred_username", "name", "groups"}}}``.  ``OidcProvider`` (below) starts it on
a free loopback port, waits for it, and stops it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

FORM = """<!doctype html><html><head><title>Test identity provider</title></head><body>
<h1>Sign in to the test identity provider</h1>{error}
<form method="post" action="{action}">
<label>User <input id="idp-username" name="username"></label>
<label>Password <input id="idp-password" name="password" type="password"></label>
<button id="idp-submit" type="submit">Sign in</button></form></body></html>"""


def build_app(issuer: str, config: dict):
    from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
    from authlib.integrations.flask_oauth2 import current_token
    from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
    from authlib.oauth2.rfc6750 import BearerTokenValidator
    from authlib.oauth2.rfc7636 import CodeChallenge
    from authlib.oidc.core import UserInfo
    from authlib.oidc.core.grants import OpenIDCode
    from authlib.oidc.core.models import AuthorizationCodeMixin
    from flask import Flask, jsonify, request
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1", "use": "sig", "alg": "RS256"})
    users = config["users"]
    codes: dict[str, "Code"] = {}
    tokens: dict[str, "Token"] = {}
    nonces: set[str] = set()

    class Client(ClientMixin):
        client_id = config["client_id"]

        def get_client_id(self):
            return self.client_id

        def get_default_redirect_uri(self):
            return config["redirect_uri"]

        def get_allowed_scope(self, scope):
            return " ".join(s for s in (scope or "").split() if s in ("openid", "profile", "email"))

        def check_redirect_uri(self, redirect_uri):
            return redirect_uri == config["redirect_uri"]

        def check_client_secret(self, client_secret):
            return secrets.compare_digest(client_secret, config["client_secret"])

        def check_endpoint_auth_method(self, method, endpoint):
            return endpoint != "token" or method == "client_secret_post"

        def check_response_type(self, response_type):
            return response_type == "code"

        def check_grant_type(self, grant_type):
            return grant_type == "authorization_code"

    client = Client()

    class Code(AuthorizationCodeMixin):
        def __init__(self, code, request):
            self.code, self.user = code, request.user
            self.redirect_uri = request.payload.redirect_uri
            self.scope = request.scope
            self.nonce = request.payload.data.get("nonce")
            self.code_challenge = request.payload.data.get("code_challenge")
            self.code_challenge_method = request.payload.data.get("code_challenge_method")
            self.auth_time = int(time.time())
            self.expires = time.time() + 300

        def get_redirect_uri(self):
            return self.redirect_uri

        def get_scope(self):
            return self.scope

        def get_nonce(self):
            return self.nonce

        def get_auth_time(self):
            return self.auth_time

    class Token(TokenMixin):
        def __init__(self, data, user):
            self.data, self.user = data, user
            self.issued = time.time()

        def check_client(self, other):
            return other.get_client_id() == client.client_id

        def get_scope(self):
            return self.data.get("scope", "")

        def get_expires_in(self):
            return int(self.data.get("expires_in", 3600))

        def is_expired(self):
            return time.time() > self.issued + self.get_expires_in()

        def is_revoked(self):
            return False

        def get_user(self):
            return self.user

        def get_client(self):
            return client

    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post"]

        def save_authorization_code(self, code, request):
            codes[code] = Code(code, request)
            if codes[code].nonce:
                nonces.add(codes[code].nonce)

        def query_authorization_code(self, code, client_):
            item = codes.get(code)
            return item if item is not None and item.expires > time.time() else None

        def delete_authorization_code(self, authorization_code):
            codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code):
            return authorization_code.user

    def user_info(user, scope):
        info = UserInfo(sub=user["sub"], preferred_username=user["preferred_username"], groups=user["groups"])
        if "profile" in scope:
            info["name"] = user["name"]
        return info

    class OpenID(OpenIDCode):
        def resolve_client_private_key(self, client_):
            return key

        def get_client_algorithm(self, client_):
            return "RS256"

        def get_client_claims(self, client_):
            return {"iss": issuer, "aud": [client.client_id], "exp": int(time.time()) + 300}

        def get_encode_header(self, client_):
            return {"alg": "RS256", "kid": "test-key-1"}

        def exists_nonce(self, nonce, request):
            return nonce in nonces

        def generate_user_info(self, user, scope):
            return user_info(user, scope)

    app = Flask(__name__)
    server = AuthorizationServer(app, query_client=lambda cid: client if cid == client.client_id else None,
                                 save_token=lambda data, req: tokens.__setitem__(data["access_token"],
                                                                                 Token(data, req.user)))
    server.register_grant(CodeGrant, [CodeChallenge(required=True), OpenID(require_nonce=True)])

    class Validator(BearerTokenValidator):
        def authenticate_token(self, token_string):
            return tokens.get(token_string)

    protect = ResourceProtector()
    protect.register_token_validator(Validator())

    @app.get("/.well-known/openid-configuration")
    def discovery():
        return jsonify({
            "issuer": issuer, "authorization_endpoint": f"{issuer}/authorize", "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks", "userinfo_endpoint": f"{issuer}/userinfo",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "scopes_supported": ["openid", "profile", "email"]})

    @app.get("/jwks")
    def jwks():
        return jsonify({"keys": [key.as_dict(private=False)]})

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize():
        from authlib.oauth2 import OAuth2Error

        try:
            server.get_consent_grant(end_user=None)
        except OAuth2Error as exc:
            return f"bad authorization request: {exc.error}: {exc.description}", 400
        action = request.full_path
        if request.method == "GET":
            return FORM.format(error="", action=action)
        user = users.get(request.form.get("username", ""))
        if user is None or not secrets.compare_digest(user["password"], request.form.get("password", "")):
            return FORM.format(error='<p id="idp-error">Wrong user or password</p>', action=action), 401
        return server.create_authorization_response(grant_user=user)

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.get("/userinfo")
    @protect()
    def userinfo():
        return jsonify(dict(user_info(current_token.user, current_token.get_scope())))

    @app.get("/healthz")
    def healthz():
        return "ok"

    return app


class OidcProvider:
    """The provider above as a real process on 127.0.0.1:<free port>."""

    def __init__(self, tmp_path, *, client_id: str, client_secret: str, redirect_uri: str, users: dict) -> None:
        from services import free_port

        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "idp.json"
        self.config.write_text(json.dumps({"client_id": client_id, "client_secret": client_secret,
                                           "redirect_uri": redirect_uri, "users": users}))
        self.log = tmp_path / "idp.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OidcProvider":
        import requests

        from services import wait_until

        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--port", str(self.port),
                                          "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"the test identity provider exited: {self.log.read_text()[-2000:]}")
            try:
                return requests.get(f"{self.issuer}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=30, message="the test identity provider did not start")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    app = build_app(f"http://127.0.0.1:{args.port}", config)
    app.run(host="127.0.0.1", port=args.port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
