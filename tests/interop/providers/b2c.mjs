// An Azure AD B2C-shaped provider for the interop suite, on loopback, plain http.
//
// B2C publishes one OpenID Connect metadata document per policy (user flow or
// custom policy), each with its own JWKS, while every policy of a tenant shares
// one issuer. Tokens name their policy in `tfp` (user flows) or `acr`. This mock
// serves that shape, with a different RSA key per policy, JWKs without `alg`
// and with `nbf`, as B2C's are. Policy names in paths compare
// case-insensitively, as B2C's do.
//
//   GET  /{tenantName}/{policy}/v2.0/.well-known/openid-configuration
//   GET  /{tenantName}/{policy}/discovery/v2.0/keys
// Test-only:
//   POST /__admin/mint    {"sign_with": policy, "kid": policy whose kid to name (default sign_with),
//                          "claims": {...}}  -> {"token": "..."}; iss, aud, sub, iat, nbf, exp
//                          default to a valid token for the tenant, claims override or
//                          remove (null) them.
//   GET  /__admin/stats   requests seen, by lower-cased path
//
// Usage: node b2c.mjs READY_FILE

import { renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';

import * as jose from 'jose';

const readyFile = process.argv[2];
if (!readyFile) {
  console.error('usage: node b2c.mjs READY_FILE');
  process.exit(2);
}

const TENANT_NAME = 'contoso.onmicrosoft.com';
const TENANT_ID = '775527ff-9a37-4307-8b3d-cc311f58d925';
const CLIENT_ID = 'f2f4ee3b-1a6c-4e08-9f7d-8e2e4b1a2c3d';
// The first two are the ones introspectd's tenant lists; the third exists here but
// is not listed, so introspectd must never fetch it.
const POLICIES = ['B2C_1_signupsignin', 'B2C_1A_signup_signin', 'B2C_1_passwordreset'];

const keys = {};
for (const policy of POLICIES) {
  const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const kid = `b2c-${policy.toLowerCase()}-key`;
  const jwk = await jose.exportJWK(publicKey);
  keys[policy.toLowerCase()] = {
    policy,
    kid,
    privateKey,
    public: { kid, nbf: 1493763266, use: 'sig', kty: 'RSA', e: jwk.e, n: jwk.n },
  };
}

const stats = {};
let base;
let issuer;

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

function metadata(policy) {
  const p = `${base}/${TENANT_NAME}/${policy}`;
  return {
    issuer,
    authorization_endpoint: `${p}/oauth2/v2.0/authorize`,
    token_endpoint: `${p}/oauth2/v2.0/token`,
    end_session_endpoint: `${p}/oauth2/v2.0/logout`,
    jwks_uri: `${p}/discovery/v2.0/keys`,
    response_modes_supported: ['query', 'fragment', 'form_post'],
    response_types_supported: ['code', 'code id_token', 'code token', 'code id_token token', 'id_token', 'id_token token', 'token', 'token id_token'],
    scopes_supported: ['openid'],
    subject_types_supported: ['pairwise'],
    id_token_signing_alg_values_supported: ['RS256'],
    token_endpoint_auth_methods_supported: ['client_secret_post', 'client_secret_basic'],
    claims_supported: ['name', 'sub', 'idp', 'tfp', 'iss', 'iat', 'exp', 'aud', 'acr', 'nonce', 'auth_time'],
  };
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
}

async function mint(req, res) {
  const body = await readJson(req);
  const signer = keys[String(body.sign_with || '').toLowerCase()];
  const named = keys[String(body.kid || body.sign_with || '').toLowerCase()];
  if (!signer || !named) {
    send(res, 400, { error: 'unknown policy' });
    return;
  }
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    iss: issuer,
    sub: 'a1b2c3d4-0000-4000-8000-00000000b2c0',
    aud: CLIENT_ID,
    exp: now + 3600,
    nbf: now,
    iat: now,
    auth_time: now,
    ver: '1.0',
    ...body.claims,
  };
  for (const [k, v] of Object.entries(payload)) if (v === null) delete payload[k];
  const token = await new jose.SignJWT(payload)
    .setProtectedHeader({ alg: 'RS256', kid: named.kid, typ: 'JWT' })
    .sign(signer.privateKey);
  send(res, 200, { token, kid: named.kid });
}

const server = createServer((req, res) => {
  const path = req.url.split('?')[0];
  const lower = path.toLowerCase();
  stats[lower] = (stats[lower] || 0) + 1;
  const handle = async () => {
    if (lower === '/__admin/stats' && req.method === 'GET') return send(res, 200, stats);
    if (lower === '/__admin/mint' && req.method === 'POST') return mint(req, res);
    const m = /^\/([^/]+)\/([^/]+)\/(v2\.0\/\.well-known\/openid-configuration|discovery\/v2\.0\/keys)$/.exec(lower);
    if (req.method === 'GET' && m && m[1] === TENANT_NAME && keys[m[2]]) {
      const k = keys[m[2]];
      return send(res, 200, m[3].startsWith('v2.0') ? metadata(k.policy) : { keys: [k.public] });
    }
    // What B2C answers for a policy it does not know.
    return send(res, 404, { error: 'AADB2C90143', error_description: 'policy not found' });
  };
  handle().catch((err) => send(res, 500, { error: String(err) }));
});

await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
base = `http://127.0.0.1:${port}`;
// B2C's tenant-id issuer, shared by every policy, with its trailing slash.
issuer = `${base}/${TENANT_ID}/v2.0/`;

const info = {
  port,
  issuer,
  tenant_name: TENANT_NAME,
  client_id: CLIENT_ID,
  metadata_url_template: `${base}/${TENANT_NAME}/{policy}/v2.0/.well-known/openid-configuration`,
  policies: Object.fromEntries(Object.values(keys).map((k) => [k.policy, { kid: k.kid, jwk: k.public }])),
};
writeFileSync(`${readyFile}.tmp`, JSON.stringify(info, null, 2));
renameSync(`${readyFile}.tmp`, readyFile);
console.error(`b2c ready: ${issuer}`);

function stop() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
