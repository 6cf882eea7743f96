// The DPoP client of the interop suites: an ES256 key, proofs built with jose (RFC 9449
// section 4.2), and DPoP-bound tokens from oidc-provider's client_credentials grant.

import { createHash, randomUUID } from 'node:crypto';

import * as jose from 'jose';

export const b64sha256 = (s) => createHash('sha256').update(s).digest('base64url');

function basic(id, secret) {
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${enc(id)}:${enc(secret)}`).toString('base64')}`;
}

// A client with a fresh key pair, for the provider described by `idp` (env.json's idp).
export async function dpopClient(idp) {
  const { publicKey, privateKey } = await jose.generateKeyPair('ES256');
  const jwk = await jose.exportJWK(publicKey);
  const jkt = await jose.calculateJwkThumbprint(jwk);

  async function proof(htm, htu, { accessToken, nonce, key = privateKey, pub = jwk } = {}) {
    const claims = { htm, htu, jti: randomUUID() };
    if (accessToken) claims.ath = b64sha256(accessToken);
    if (nonce) claims.nonce = nonce;
    return new jose.SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: pub })
      .setIssuedAt()
      .sign(key);
  }

  // A token request with a proof; retried once with the provider's nonce if it asks.
  async function boundToken(resource) {
    const { dpop } = idp.clients;
    let nonce;
    for (let attempt = 0; attempt < 2; attempt += 1) {
      const res = await fetch(idp.token_endpoint, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: basic(dpop.id, dpop.secret),
          dpop: await proof('POST', idp.token_endpoint, { nonce }),
        },
        body: new URLSearchParams({ grant_type: 'client_credentials', resource, scope: 'api:read' }),
        signal: AbortSignal.timeout(10_000),
      });
      const body = await res.json();
      if (res.ok) return body;
      nonce = res.headers.get('dpop-nonce');
      if (body.error !== 'use_dpop_nonce' || !nonce) throw new Error(`token endpoint: ${res.status} ${JSON.stringify(body)}`);
    }
    throw new Error('token endpoint kept asking for a nonce');
  }

  return { jwk, jkt, proof, boundToken };
}
