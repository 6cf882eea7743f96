// Sender-constrained tokens through a real Envoy: oidc-provider issues a DPoP-bound
// token (real proofs, built with jose) and a certificate-bound token (over real mutual
// TLS); plain HTTP requests through Envoy's ext_authz filter reach the upstream only
// with the proof or certificate the token is bound to. Envoy passes the method, scheme,
// Host and path (htm, htu), the `dpop` headers, and, on the mutual-TLS listener with
// include_peer_certificate, the client certificate; the usual bypasses are denied with
// the RFC 9449 / RFC 6750 challenge on the HTTP answer.
//
// Usage: node sender.mjs ENV_JSON ENVOY_ENV_JSON

import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

import * as jose from 'jose';

import { dpopClient } from '../node/dpop_client.mjs';
import { reporter } from '../node/report.mjs';

const env = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { ports } = JSON.parse(readFileSync(process.argv[3], 'utf8'));
const IDP = env.idp;
const CERTS = env.certs;
const pem = (name) => readFileSync(`${CERTS}/${name}`);

const { check, finish } = reporter('envoy-sender');
function expect(cond, what) { if (!cond) throw new Error(what); }

// One request; `headers` is a list of pairs (repeats allowed). Resolves to
// { status, headers, body } with the body parsed as JSON when it is.
function request({ port, path, method = 'GET', headers = [], tls }) {
  const mod = tls ? https : http;
  // Raw header pairs (so a header can repeat); Node then adds no Host of its own.
  const raw = headers.some(([k]) => k === 'host') ? headers : [['host', `127.0.0.1:${port}`], ...headers];
  return new Promise((resolve, reject) => {
    const req = mod.request({
      host: '127.0.0.1', port, path, method, headers: raw.flat(), timeout: 15_000,
      ...(tls ? { ca: pem('ca.pem'), cert: pem(`${tls}.pem`), key: pem(`${tls}.key`) } : {}),
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => {
        let body = text;
        try { body = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, body });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

const upstreamSaw = (r, name) => (r.body?.headers || []).filter(([k]) => k === name).map(([, v]) => v);

function allowedBy(r, what) {
  expect(r.status === 200 && Array.isArray(r.body?.headers), `${what}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  expect(upstreamSaw(r, 'x-auth-subject').length === 1, `${what}: no x-auth-subject upstream`);
}

function deniedWith(r, { challenge, error, description }) {
  expect(r.status === 401, `HTTP ${r.status} ${JSON.stringify(r.body)}, want 401`);
  const www = r.headers['www-authenticate'] || '';
  expect(www.startsWith(challenge) && www.includes(`error="${error}"`), `www-authenticate ${www}`);
  expect(r.body?.error_description === description, `body ${JSON.stringify(r.body)}`);
  expect(r.headers['cache-control'] === 'no-store', `cache-control ${r.headers['cache-control']}`);
}

// --- DPoP ---------------------------------------------------------------------------
const client = await dpopClient(IDP);
const issued = await client.boundToken('https://dpop.api.test');
const token = issued.access_token;
const PATH = '/oidc/orders/17';
const DPOP = 'DPoP realm="introspectd", algs="';
const htuOf = (port) => `http://127.0.0.1:${port}${PATH}`;

async function dpopGet({ listener = 'ext_authz', proofs, auth = `DPoP ${token}`, extra = [], path = `${PATH}?expand=items` }) {
  const headers = [['authorization', auth], ...proofs.map((p) => ['dpop', p]), ...extra];
  return request({ port: ports[listener], path, headers });
}

await check('oidc-provider issues a DPoP-bound JWT (cnf.jkt = the client key)', async () => {
  expect(jose.decodeJwt(token).cnf?.jkt === client.jkt, 'cnf.jkt');
});

for (const listener of ['ext_authz', 'ext_authz_raw']) {
  const htu = htuOf(ports[listener]);
  await check(`${listener}: the DPoP-bound token with a fresh proof for Envoy's URL reaches the upstream`, async () => {
    const r = await dpopGet({ listener, proofs: [await client.proof('GET', htu, { accessToken: token })] });
    allowedBy(r, 'DPoP');
  });
  await check(`${listener}: two dpop headers are an invalid proof (401 invalid_dpop_proof, DPoP challenge)`, async () => {
    const p = () => client.proof('GET', htu, { accessToken: token });
    const r = await dpopGet({ listener, proofs: [await p(), await p()] });
    deniedWith(r, { challenge: DPOP, error: 'invalid_dpop_proof', description: 'invalid_dpop_proof' });
  });
}

const htu = htuOf(ports.ext_authz);
const refusals = [
  ['the bound token as Bearer', async () => ({ auth: `Bearer ${token}`, proofs: [] }), 'invalid_token', 'binding_mismatch'],
  ['no proof', async () => ({ proofs: [] }), 'invalid_dpop_proof', 'invalid_dpop_proof'],
  ['a proof for POST', async () => ({ proofs: [await client.proof('POST', htu, { accessToken: token })] }), 'invalid_dpop_proof', 'invalid_dpop_proof'],
  ['a proof for the public host, sent to another Host with x-forwarded-host (Host laundering)', async () => ({
    proofs: [await client.proof('GET', 'https://api.example.com/oidc/orders/17', { accessToken: token })],
    extra: [['host', 'internal.example:8080'], ['x-forwarded-host', 'api.example.com'], ['x-forwarded-proto', 'https']],
  }), 'invalid_dpop_proof', 'invalid_dpop_proof'],
  ['a proof for another path', async () => ({ proofs: [await client.proof('GET', htu.replace('/17', '/18'), { accessToken: token })] }), 'invalid_dpop_proof', 'invalid_dpop_proof'],
  ['a proof without ath', async () => ({ proofs: [await client.proof('GET', htu)] }), 'invalid_dpop_proof', 'invalid_dpop_proof'],
  ['a proof by another key', async () => {
    const other = await dpopClient(IDP);
    return { proofs: [await other.proof('GET', htu, { accessToken: token })] };
  }, 'invalid_token', 'binding_mismatch'],
];
for (const [name, build, error, description] of refusals) {
  await check(`denies ${name} (401 ${description}, DPoP challenge error="${error}")`, async () => {
    deniedWith(await dpopGet(await build()), { challenge: DPOP, error, description });
  });
}

await check('denies the same proof twice (jti replay through Envoy)', async () => {
  const p = await client.proof('GET', htu, { accessToken: token });
  allowedBy(await dpopGet({ proofs: [p] }), 'first use');
  deniedWith(await dpopGet({ proofs: [p] }), { challenge: DPOP, error: 'invalid_dpop_proof', description: 'invalid_dpop_proof' });
});

// --- mutual TLS -----------------------------------------------------------------------
function mtlsToken() {
  const c = IDP.clients.mtls;
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
  const body = new URLSearchParams({ grant_type: 'client_credentials', resource: 'https://mtls.api.test', scope: 'api:read' }).toString();
  const url = new URL(IDP.mtls_token_endpoint);
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: url.hostname, port: url.port, path: url.pathname, method: 'POST', timeout: 15_000,
      ca: pem('ca.pem'), cert: pem('client-bound.pem'), key: pem('client-bound.key'),
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`${enc(c.id)}:${enc(c.secret)}`).toString('base64')}`,
      },
    }, (res) => {
      let raw = '';
      res.on('data', (d) => { raw += d; });
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(raw).access_token) : reject(new Error(`token: ${res.statusCode} ${raw}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const mtls = await mtlsToken();
const mtlsGet = (cert, auth = `Bearer ${mtls}`) => request({
  port: ports.ext_authz_mtls, path: '/oidc/accounts', tls: cert, headers: [['authorization', auth]],
});
const BEARER = 'Bearer realm="introspectd"';

await check('oidc-provider issues a certificate-bound JWT (cnf x5t#S256)', async () => {
  expect(typeof jose.decodeJwt(mtls).cnf?.['x5t#S256'] === 'string', 'cnf x5t#S256');
});
await check('ext_authz_mtls: the certificate-bound token over TLS with its certificate reaches the upstream', async () => {
  allowedBy(await mtlsGet('client-bound'), 'bound certificate');
});
await check('ext_authz_mtls: the same token over TLS with another client certificate is denied (401 binding_mismatch)', async () => {
  deniedWith(await mtlsGet('client-other'), { challenge: BEARER, error: 'invalid_token', description: 'binding_mismatch' });
});
await check('ext_authz: the certificate-bound token without TLS (no certificate) is denied (401 binding_mismatch)', async () => {
  const r = await request({ port: ports.ext_authz, path: '/oidc/accounts', headers: [['authorization', `Bearer ${mtls}`]] });
  deniedWith(r, { challenge: BEARER, error: 'invalid_token', description: 'binding_mismatch' });
});
await check('ext_authz_mtls: a DPoP-bound token still needs its proof on the mutual-TLS listener', async () => {
  const r = await request({
    port: ports.ext_authz_mtls, path: PATH, tls: 'client-other', headers: [['authorization', `Bearer ${token}`]],
  });
  deniedWith(r, { challenge: DPOP, error: 'invalid_token', description: 'binding_mismatch' });
});

finish();
