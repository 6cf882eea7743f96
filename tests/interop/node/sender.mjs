// Sender-constrained tokens with a real provider: oidc-provider's dPoP feature issues
// DPoP-bound tokens to a client that builds real RFC 9449 proofs with jose (for the
// token request and for each resource request), and introspectd checks the binding
// through Validate and Introspect, refusing the usual bypasses.
//
// Usage: node sender.mjs ENV_JSON

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as jose from 'jose';

import { dpopClient } from './dpop_client.mjs';
import { reporter } from './report.mjs';

const env = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const IDP = env.idp;
const TENANT = env.tenants.oidc.id;
const RPC_TIMEOUT_MS = 10_000;
const RESOURCE = 'https://dpop.api.test';

const def = protoLoader.loadSync('introspect/v1/introspect.proto', {
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  includeDirs: [join(env.repo_root, 'proto')],
});
const pkg = grpc.loadPackageDefinition(def);
const stub = new pkg.introspect.v1.TokenService(env.service, grpc.credentials.createInsecure());

const { check, finish } = reporter('node-dpop');

function unary(method, request) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: Date.now() + RPC_TIMEOUT_MS }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

function expect(cond, what) { if (!cond) throw new Error(what); }

// The client's DPoP key, and a proof for one request (RFC 9449 section 4.2).
const { jkt, proof, boundToken } = await dpopClient(IDP);

function dpopRequest(token, proofs, uri, extra = {}) {
  return {
    token, tenant: TENANT, authorization_scheme: 'DPoP', dpop_proofs: proofs,
    http_method: 'GET', http_uri: uri, ...extra,
  };
}

const uri = `${RESOURCE}/orders/17?expand=items`;
const htu = `${RESOURCE}/orders/17`;
const issued = await boundToken(RESOURCE);
const token = issued.access_token;

await check('oidc-provider issues a DPoP-bound JWT for a real proof (token_type DPoP, cnf.jkt = the key thumbprint)', async () => {
  expect(issued.token_type === 'DPoP', `token_type ${issued.token_type}`);
  const payload = jose.decodeJwt(token);
  expect(payload.cnf?.jkt === jkt, `cnf ${JSON.stringify(payload.cnf)}, key ${jkt}`);
});

await check('Validate: the bound token with a fresh proof is valid, binding DPOP with the key thumbprint', async () => {
  const r = await unary('Validate', dpopRequest(token, [await proof('GET', htu, { accessToken: token })], uri));
  expect(r.valid, `invalid: ${r.error?.code} ${r.error?.message}`);
  expect(r.binding?.kind === 'BINDING_KIND_DPOP' && r.binding.jkt === jkt, `binding ${JSON.stringify(r.binding)}`);
  expect(r.www_authenticate === '', `challenge on a valid answer: ${r.www_authenticate}`);
});

await check('Validate: the "DPoP " prefix on the token sets the scheme', async () => {
  const r = await unary('Validate', dpopRequest(`DPoP ${token}`, [await proof('GET', htu, { accessToken: token })], uri, { authorization_scheme: '' }));
  expect(r.valid, `invalid: ${r.error?.code} ${r.error?.message}`);
});

const refusals = [
  ['the bound token as a Bearer token', async () => ({ token, tenant: TENANT }), 'ERROR_CODE_BINDING_MISMATCH', 'invalid_token'],
  ['no proof', async () => dpopRequest(token, [], uri), 'ERROR_CODE_INVALID_DPOP_PROOF', 'invalid_dpop_proof'],
  ['a proof for another host (Host laundering)', async () => dpopRequest(token, [await proof('GET', 'https://other.api.test/orders/17', { accessToken: token })], uri), 'ERROR_CODE_INVALID_DPOP_PROOF', 'invalid_dpop_proof'],
  ['a proof for POST', async () => dpopRequest(token, [await proof('POST', htu, { accessToken: token })], uri), 'ERROR_CODE_INVALID_DPOP_PROOF', 'invalid_dpop_proof'],
  ['a proof without ath', async () => dpopRequest(token, [await proof('GET', htu)], uri), 'ERROR_CODE_INVALID_DPOP_PROOF', 'invalid_dpop_proof'],
  ['the token-request proof reused at the resource', async () => dpopRequest(token, [await proof('POST', IDP.token_endpoint)], IDP.token_endpoint, { http_method: 'POST' }), 'ERROR_CODE_INVALID_DPOP_PROOF', 'invalid_dpop_proof'],
  ['a proof by another key', async () => {
    const other = await jose.generateKeyPair('ES256');
    const otherJwk = await jose.exportJWK(other.publicKey);
    return dpopRequest(token, [await proof('GET', htu, { accessToken: token, key: other.privateKey, pub: otherJwk })], uri);
  }, 'ERROR_CODE_BINDING_MISMATCH', 'invalid_token'],
];
for (const [name, build, code, error] of refusals) {
  await check(`Validate refuses ${name} (${code}, DPoP challenge error="${error}")`, async () => {
    const r = await unary('Validate', await build());
    expect(!r.valid && r.error?.code === code, `got ${r.valid ? 'valid' : r.error?.code}: ${r.error?.message}`);
    expect(r.www_authenticate.startsWith('DPoP realm="introspectd", algs="') && r.www_authenticate.includes(`error="${error}"`), `challenge ${r.www_authenticate}`);
  });
}

await check('Validate refuses the same proof twice (jti replay)', async () => {
  const p = await proof('GET', htu, { accessToken: token });
  const first = await unary('Validate', dpopRequest(token, [p], uri));
  const second = await unary('Validate', dpopRequest(token, [p], uri));
  expect(first.valid, `first use: ${first.error?.code}`);
  expect(!second.valid && second.error?.code === 'ERROR_CODE_INVALID_DPOP_PROOF', `second use: ${second.error?.code}`);
});

await check('Introspect: an opaque DPoP-bound token is active with its proof, inactive as Bearer (binding from the provider\'s cnf)', async () => {
  const opaque = (await boundToken('https://opaque.api.test')).access_token;
  expect(opaque.split('.').length !== 3, 'expected an opaque token');
  const ohtu = 'https://opaque.api.test/things';
  const withProof = await unary('Introspect', {
    token: opaque, tenant: TENANT, authorization_scheme: 'DPoP',
    dpop_proofs: [await proof('GET', ohtu, { accessToken: opaque })], http_method: 'GET', http_uri: ohtu,
  });
  expect(withProof.active, 'inactive with its proof');
  const asBearer = await unary('Introspect', { token: opaque, tenant: TENANT });
  expect(!asBearer.active, 'active as a Bearer token');
});

finish();
