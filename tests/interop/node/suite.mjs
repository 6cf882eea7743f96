// The Node.js client's checks (@grpc/grpc-js + @grpc/proto-loader, the proto
// loaded from proto/ at run time): health, Validate, Introspect and WatchKeys
// against oidc-provider and the B2C-shaped provider, and the Node example.
//
// Usage: node suite.mjs ENV_JSON

import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as jose from 'jose';
import { reporter } from './report.mjs';

const env = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const IDP = env.idp;
const B2C = env.b2c;
const T = env.tenants;
const RPC_TIMEOUT_MS = 10_000;

const LOADER = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
const def = protoLoader.loadSync(
  ['introspect/v1/introspect.proto', 'grpc/health/v1/health.proto'],
  { ...LOADER, includeDirs: [join(env.repo_root, 'proto'), env.health_proto_dir] },
);
const pkg = grpc.loadPackageDefinition(def);
const stub = new pkg.introspect.v1.TokenService(env.service, grpc.credentials.createInsecure());
const health = new pkg.grpc.health.v1.Health(env.service, grpc.credentials.createInsecure());

const { check, finish } = reporter('node');

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + RPC_TIMEOUT_MS }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

class Fields {
  constructor(what) { this.what = what; this.problems = []; }

  eq(field, got, want) {
    const g = JSON.stringify(got);
    const w = JSON.stringify(want);
    if (g !== w) this.problems.push(`${field}: got ${g?.slice(0, 160)}, want ${w?.slice(0, 160)}`);
  }

  true(field, cond, detail) { if (!cond) this.problems.push(`${field}: ${detail}`); }

  done() { if (this.problems.length) throw new Error(`${this.what}: ${this.problems.join('; ')}`); }
}

// google.protobuf.Value / Struct, as proto-loader decodes them, to plain JSON.
function fromValue(v) {
  switch (v?.kind) {
    case 'nullValue': return null;
    case 'numberValue': return v.numberValue;
    case 'stringValue': return v.stringValue;
    case 'boolValue': return v.boolValue;
    case 'structValue': return fromStruct(v.structValue);
    case 'listValue': return (v.listValue.values || []).map(fromValue);
    default: return undefined;
  }
}
function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries(s?.fields || {})) out[k] = fromValue(v);
  return out;
}
// Key order is not part of JSON's meaning.
function sorted(v) {
  if (Array.isArray(v)) return v.map(sorted);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]));
  return v;
}

function basic(id, secret) {
  // RFC 6749 2.3.1: form-urlencode each part before Basic.
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${enc(id)}:${enc(secret)}`).toString('base64')}`;
}

async function post(url, form, auth) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...(auth ? { authorization: auth } : {}) },
    body: new URLSearchParams(form),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${url} answered ${res.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

async function accessToken(resource, scope = 'api:read') {
  const { app } = IDP.clients;
  const body = await post(IDP.token_endpoint, { grant_type: 'client_credentials', resource, scope }, basic(app.id, app.secret));
  return body.access_token;
}

async function providerIntrospect(token) {
  const c = IDP.clients.introspectd;
  return post(IDP.introspection_endpoint, { token }, basic(c.id, c.secret));
}

async function b2cMint(signWith, claims) {
  const res = await fetch(`http://127.0.0.1:${B2C.port}/__admin/mint`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ sign_with: signWith, claims }),
    signal: AbortSignal.timeout(10_000),
  });
  if (!res.ok) throw new Error(`b2c mint answered ${res.status}`);
  return (await res.json()).token;
}

const asList = (aud) => (Array.isArray(aud) ? aud : [aud]);
const seconds = (ts) => (ts ? Number(ts.seconds) : null);

function expectValid(resp, token, tenant, policy = '') {
  const h = jose.decodeProtectedHeader(token);
  const p = jose.decodeJwt(token);
  const f = new Fields('Validate');
  f.eq('valid', resp.valid, true);
  f.true('error', resp.error === null, `set on a valid answer: ${JSON.stringify(resp.error)}`);
  f.eq('tenant', resp.tenant, tenant);
  f.eq('policy (case-insensitive)', resp.policy.toLowerCase(), policy.toLowerCase());
  f.eq('issuer', resp.issuer, p.iss);
  f.eq('subject', resp.subject, p.sub);
  f.eq('audiences', resp.audiences, asList(p.aud));
  f.eq('scopes', resp.scopes, p.scope ? p.scope.split(' ') : []);
  f.eq('expires_at', seconds(resp.expires_at), p.exp ?? null);
  f.eq('issued_at', seconds(resp.issued_at), p.iat ?? null);
  f.eq('not_before', seconds(resp.not_before), p.nbf ?? null);
  f.eq('key_id', resp.key_id, h.kid ?? '');
  f.eq('algorithm', resp.algorithm, h.alg);
  f.eq('claims', sorted(fromStruct(resp.claims)), sorted(p));
  f.done();
}

function expectInvalid(resp, code, tenant) {
  const f = new Fields('Validate');
  f.eq('valid', resp.valid, false);
  f.eq('error.code', resp.error?.code, code);
  f.true('error.message', Boolean(resp.error?.message), 'empty');
  f.eq('tenant', resp.tenant, tenant);
  f.eq('claims', fromStruct(resp.claims), {});
  f.done();
}

async function healthIs(service, want) {
  const resp = await unary(health, 'Check', { service });
  if (resp.status !== want) throw new Error(`status ${resp.status}, want ${want}`);
}

await check('health "" is SERVING', () => healthIs('', 'SERVING'));
await check('health "introspect.v1.TokenService" is SERVING', () => healthIs('introspect.v1.TokenService', 'SERVING'));

for (const [resource, alg] of [['https://rs256.api.test', 'RS256'], ['https://es256.api.test', 'ES256']]) {
  await check(`Validate oidc-provider at+jwt ${alg}, field by field`, async () => {
    const token = await accessToken(resource);
    const h = jose.decodeProtectedHeader(token);
    if (h.typ !== 'at+jwt' || h.alg !== alg) throw new Error(`provider header ${JSON.stringify(h)}`);
    expectValid(await unary(stub, 'Validate', { token }), token, T.oidc.id);
  });
}

await check('Validate oidc-provider token for another resource is INVALID_AUDIENCE', async () => {
  const token = await accessToken('https://other.api.test');
  expectInvalid(await unary(stub, 'Validate', { token }), 'ERROR_CODE_INVALID_AUDIENCE', T.oidc.id);
});

await check('Validate B2C token (tfp) with its policy', async () => {
  const [policy] = T.b2c.policies;
  const token = await b2cMint(policy, { tfp: policy });
  expectValid(await unary(stub, 'Validate', { token }), token, T.b2c.id, policy);
});

await check('Introspect oidc-provider at+jwt locally: RFC 7662 fields', async () => {
  const token = await accessToken('https://rs256.api.test');
  const p = jose.decodeJwt(token);
  const resp = await unary(stub, 'Introspect', { token, token_type_hint: 'access_token' });
  const f = new Fields('Introspect');
  f.eq('active', resp.active, true);
  f.eq('scope', resp.scope, p.scope);
  f.eq('client_id', resp.client_id, p.client_id);
  f.eq('username', resp.username, '');
  f.eq('token_type', resp.token_type, 'Bearer');
  f.eq('exp', resp.exp, p.exp);
  f.eq('iat', resp.iat, p.iat);
  f.eq('nbf', resp.nbf, p.nbf ?? 0);
  f.eq('sub', resp.sub, p.sub);
  f.eq('aud', resp.aud, asList(p.aud));
  f.eq('iss', resp.iss, p.iss);
  f.eq('jti', resp.jti, p.jti);
  f.eq('tenant', resp.tenant, T.oidc.id);
  f.done();
});

await check('Introspect oidc-provider opaque token: as the provider answers', async () => {
  const token = await accessToken('https://opaque.api.test', 'api:read api:write');
  const up = await providerIntrospect(token);
  const resp = await unary(stub, 'Introspect', { token, token_type_hint: 'access_token', tenant: T.oidc.id });
  const f = new Fields('Introspect');
  f.eq('upstream active', up.active, true);
  f.eq('active', resp.active, true);
  f.eq('scope', resp.scope, up.scope ?? '');
  f.eq('client_id', resp.client_id, up.client_id ?? '');
  f.eq('token_type', resp.token_type, up.token_type ?? '');
  f.eq('exp', resp.exp, up.exp ?? 0);
  f.eq('iat', resp.iat, up.iat ?? 0);
  f.eq('sub', resp.sub, up.sub ?? '');
  f.eq('aud', resp.aud, up.aud === undefined ? [] : asList(up.aud));
  f.eq('iss', resp.iss, up.iss ?? '');
  f.eq('tenant', resp.tenant, T.oidc.id);
  f.done();
});

await check('WatchKeys {tenants: [oidc]}: EXISTING per published key, then SYNCED, field by field', async () => {
  const res = await fetch(IDP.jwks_uri, { signal: AbortSignal.timeout(10_000) });
  const published = (await res.json()).keys;
  const events = await new Promise((resolve, reject) => {
    const got = [];
    const call = stub.WatchKeys({ tenants: [T.oidc.id] }, { deadline: Date.now() + 10_000 });
    call.on('data', (ev) => {
      got.push(ev);
      if (ev.type === 'KEY_EVENT_TYPE_SYNCED') {
        call.cancel();
        resolve(got);
      }
    });
    call.on('error', (err) => (err.code === grpc.status.CANCELLED ? resolve(got) : reject(err)));
    call.on('end', () => resolve(got));
  });
  const f = new Fields('WatchKeys');
  const types = events.map((e) => e.type);
  f.eq('event types', types, [...published.map(() => 'KEY_EVENT_TYPE_EXISTING'), 'KEY_EVENT_TYPE_SYNCED']);
  const byKid = Object.fromEntries(events.filter((e) => e.type === 'KEY_EVENT_TYPE_EXISTING').map((e) => [e.key_id, e]));
  f.eq('key ids', Object.keys(byKid).sort(), published.map((k) => k.kid).sort());
  for (const jwk of published) {
    const ev = byKid[jwk.kid];
    if (!ev) continue;
    f.eq(`${jwk.kid} tenant`, ev.tenant, T.oidc.id);
    f.eq(`${jwk.kid} policy`, ev.policy, '');
    f.eq(`${jwk.kid} issuer`, ev.issuer, IDP.issuer);
    f.eq(`${jwk.kid} algorithm`, ev.algorithm, jwk.alg);
    f.eq(`${jwk.kid} key_type`, ev.key_type, jwk.kty);
    f.eq(`${jwk.kid} thumbprint`, ev.thumbprint, await jose.calculateJwkThumbprint(jwk, 'sha256'));
    f.true(`${jwk.kid} observed_at`, ev.observed_at && Number(ev.observed_at.seconds) > 0, 'unset');
    let streamed = {};
    try { streamed = JSON.parse(ev.jwk); } catch (err) { f.true(`${jwk.kid} jwk`, false, `not JSON: ${err.message}`); }
    for (const m of (jwk.kty === 'RSA' ? ['kty', 'n', 'e'] : ['kty', 'crv', 'x', 'y'])) {
      f.eq(`${jwk.kid} jwk.${m}`, streamed[m], jwk[m]);
    }
    f.true(`${jwk.kid} jwk`, !['d', 'p', 'q', 'dp', 'dq', 'qi'].some((m) => m in streamed), 'carries private members');
    // The streamed JWK is usable as it is: it verifies a token of the provider's.
    if (jwk.alg === 'RS256') {
      const token = await accessToken('https://rs256.api.test');
      await jose.jwtVerify(token, await jose.importJWK({ ...streamed, alg: 'RS256' }), { typ: 'at+jwt' })
        .catch((err) => f.true(`${jwk.kid} jwk`, false, `does not verify the provider's token: ${err.message}`));
    }
  }
  f.done();
});

await check('examples/node/validate.js: valid and invalid token', async () => {
  const run = promisify(execFile);
  const script = join(env.repo_root, 'examples', 'node', 'validate.js');
  const opts = {
    timeout: 30_000,
    env: { ...process.env, INTROSPECTD_ADDR: env.service, NODE_PATH: env.node_modules },
  };
  const good = await accessToken('https://rs256.api.test');
  const ok = await run(process.execPath, [script, good], opts).catch((err) => err);
  const want = `valid: tenant=${T.oidc.id} subject=${IDP.clients.app.id} scopes=api:read`;
  if ((ok.code ?? 0) !== 0 || ok.stdout.trim() !== want) {
    throw new Error(`valid token: exit ${ok.code ?? 0}, stdout ${JSON.stringify(ok.stdout)}, stderr ${JSON.stringify(String(ok.stderr).slice(-300))}`);
  }
  const other = await accessToken('https://other.api.test');
  const bad = await run(process.execPath, [script, other], opts).catch((err) => err);
  if (bad.code !== 1 || !bad.stdout.startsWith('invalid: ERROR_CODE_INVALID_AUDIENCE')) {
    throw new Error(`wrong audience: exit ${bad.code ?? 0}, stdout ${JSON.stringify(bad.stdout)}`);
  }
});

stub.close();
health.close();
finish();
