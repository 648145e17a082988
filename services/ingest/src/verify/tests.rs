//! Verifiers against published examples, and properties over arbitrary input.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use sha2::{Sha256, Sha512};
use switchyard_core::catalog::{GenericHmac, HmacAlgorithm, SignatureEncoding, Verify};

use super::*;

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn standard() -> Verify {
    Verify::StandardWebhooks {
        secrets: vec!["S".into()],
        tolerance: FIVE_MINUTES,
    }
}

fn stripe() -> Verify {
    Verify::Stripe {
        secrets: vec!["S".into()],
        tolerance: FIVE_MINUTES,
    }
}

fn generic(
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    prefix: &str,
    timestamp: bool,
) -> Verify {
    Verify::Hmac(GenericHmac {
        secrets: vec!["S".into()],
        header: "X-Signature".into(),
        algorithm,
        encoding,
        prefix: prefix.into(),
        timestamp_header: timestamp.then(|| "X-Timestamp".into()),
        payload: None,
        tolerance: FIVE_MINUTES,
    })
}

fn hmac256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hmac512(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha512>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

// --- Published examples -------------------------------------------------------------

#[test]
fn standard_webhooks_specification_example() {
    // From the Standard Webhooks specification.
    let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let verifier = Verifier::with_keys(&standard(), vec![key]);
    let request = headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        (
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ]);
    let body = br#"{"test": 2432232314}"#;
    assert_eq!(verifier.verify(&request, body, 1614265330 + 10), Ok(()));
    assert_eq!(
        verifier.verify(&request, br#"{"test": 2432232315}"#, 1614265330),
        Err(Rejection::Mismatch)
    );
    // Five minutes and one second later the same request is stale.
    assert_eq!(
        verifier.verify(&request, body, 1614265330 + 301),
        Err(Rejection::Stale(301, 300))
    );
    // A rotation: several signatures, one of them by our key, in any order.
    let rotated = headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        (
            "webhook-signature",
            "v1,Zm9yZWlnbiBzaWduYXR1cmU= v2,xyz v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ]);
    assert_eq!(verifier.verify(&rotated, body, 1614265330), Ok(()));
}

#[test]
fn stripe_example() {
    // A payment_intent.succeeded event signed as Stripe signs (t=…,v1=HMAC(t.body)),
    // computed independently with Python's hmac module.
    let body = br#"{"id":"evt_3OaBcD2eZvKYlo2C0XyZ1234","object":"event","api_version":"2023-10-16","created":1700000000,"data":{"object":{"id":"pi_3OaBcD2eZvKYlo2C0AbC5678","object":"payment_intent","amount":2000,"currency":"usd","status":"succeeded"}},"livemode":false,"pending_webhooks":1,"type":"payment_intent.succeeded"}"#;
    let verifier = Verifier::with_keys(
        &stripe(),
        vec![b"whsec_QGZ8mNbPhwVx2Ltk9JsR4aEwYd7uFq3c".to_vec()],
    );
    let signature = "t=1700000000,v1=2a6f115748e382b650168a14f63ed4317a1bd50b234f974938f2afece5b377c0,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";
    let request = headers(&[("stripe-signature", signature)]);
    assert_eq!(verifier.verify(&request, body, 1700000100), Ok(()));
    assert_eq!(
        verifier.verify(&request, body, 1700000400),
        Err(Rejection::Stale(400, 300))
    );
    let mut tampered = body.to_vec();
    tampered[60] ^= 1;
    assert_eq!(
        verifier.verify(&request, &tampered, 1700000100),
        Err(Rejection::Mismatch)
    );
    assert!(matches!(
        verifier.verify(&headers(&[("stripe-signature", "v1=2a6f")]), body, 1700000100),
        Err(Rejection::Malformed(_, reason)) if reason.contains("t=")
    ));
}

#[test]
fn github_example() {
    // From GitHub's "Validating webhook deliveries" documentation.
    let verifier = Verifier::with_keys(
        &Verify::Github {
            secrets: vec!["S".into()],
        },
        vec![b"It's a Secret to Everybody".to_vec()],
    );
    let request = headers(&[(
        "x-hub-signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    assert_eq!(verifier.verify(&request, b"Hello, World!", 0), Ok(()));
    assert_eq!(
        verifier.verify(&request, b"Hello, World?", 0),
        Err(Rejection::Mismatch)
    );
    assert_eq!(
        verifier.verify(&HeaderMap::new(), b"Hello, World!", 0),
        Err(Rejection::Missing("x-hub-signature-256".into()))
    );
    // The old SHA-1 header alone is not accepted.
    let sha1 = headers(&[(
        "x-hub-signature",
        "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
    )]);
    assert!(verifier.verify(&sha1, b"Hello, World!", 0).is_err());
}

#[test]
fn shopify_example() {
    // HMAC-SHA256 of the raw body, base64, computed independently with Python.
    let verifier = Verifier::with_keys(
        &Verify::Shopify {
            secrets: vec!["S".into()],
        },
        vec![b"test-webhook-secret".to_vec()],
    );
    let body = br#"{"id":1234567890,"email":"customer@example.com","total_price":"123.45"}"#;
    let request = headers(&[(
        "x-shopify-hmac-sha256",
        "QNyObTlKbMx2qDlPF/ZOZcBqg5OgPg+2oky3zldc0Gw=",
    )]);
    assert_eq!(verifier.verify(&request, body, 0), Ok(()));
    // Re-serialised JSON (spaces) is a different body: the raw bytes are what is signed.
    let reformatted =
        br#"{"id": 1234567890, "email": "customer@example.com", "total_price": "123.45"}"#;
    assert_eq!(
        verifier.verify(&request, reformatted, 0),
        Err(Rejection::Mismatch)
    );
}

#[test]
fn generic_hmac_sha512_base64_with_timestamp() {
    // HMAC-SHA512 over "{timestamp}.{body}", base64, computed independently with Python.
    let verify = generic(HmacAlgorithm::Sha512, SignatureEncoding::Base64, "", true);
    let verifier = Verifier::with_keys(&verify, vec![b"partner-secret".to_vec()]);
    let request = headers(&[
        (
            "x-signature",
            "1KKkpjinmaJ9Sbh/QDsanX0ww2IY3qi5TaorxWZ4Ck9D8sLZdgX3qU0Jfqtw+GEb5CjqRbFdOp8OHpFAesg9Vg==",
        ),
        ("x-timestamp", "1700000000"),
    ]);
    let body = br#"{"event":"order.created"}"#;
    assert_eq!(verifier.verify(&request, body, 1700000000), Ok(()));
    assert_eq!(
        verifier.verify(&request, body, 1700001000),
        Err(Rejection::Stale(1000, 300))
    );
    let no_time = headers(&[("x-signature", "AAAA")]);
    assert_eq!(
        verifier.verify(&no_time, body, 1700000000),
        Err(Rejection::Missing("X-Timestamp".into()))
    );
}

#[test]
fn generic_hmac_prefix_and_payload_template() {
    let mut verify = generic(
        HmacAlgorithm::Sha256,
        SignatureEncoding::Hex,
        "sha256=",
        false,
    );
    let verifier = Verifier::with_keys(&verify, vec![b"k".to_vec()]);
    let signature = format!("sha256={}", hex::encode(hmac256(b"k", b"{}")));
    assert_eq!(
        verifier.verify(&headers(&[("x-signature", &signature)]), b"{}", 0),
        Ok(())
    );
    // Without the prefix the header is malformed, and says which prefix it wanted.
    let bare = hex::encode(hmac256(b"k", b"{}"));
    assert!(matches!(
        verifier.verify(&headers(&[("x-signature", &bare)]), b"{}", 0),
        Err(Rejection::Malformed(_, reason)) if reason.contains("sha256=")
    ));
    // A custom template: "v0:{timestamp}:{body}" (Slack's form).
    if let Verify::Hmac(hmac) = &mut verify {
        hmac.prefix = "v0=".into();
        hmac.timestamp_header = Some("X-Slack-Request-Timestamp".into());
        hmac.payload = Some("v0:{timestamp}:{body}".into());
    }
    let verifier = Verifier::with_keys(&verify, vec![b"k".to_vec()]);
    let signature = format!(
        "v0={}",
        hex::encode(hmac256(b"k", b"v0:1700000000:{\"a\":1}"))
    );
    let request = headers(&[
        ("x-signature", &signature),
        ("x-slack-request-timestamp", "1700000000"),
    ]);
    assert_eq!(verifier.verify(&request, b"{\"a\":1}", 1700000005), Ok(()));
}

#[test]
fn any_of_several_secrets_is_accepted_during_a_rotation() {
    let verifier = Verifier::with_keys(
        &Verify::Github {
            secrets: vec!["OLD".into(), "NEW".into()],
        },
        vec![b"old".to_vec(), b"new".to_vec()],
    );
    for key in [b"old".as_slice(), b"new"] {
        let signature = format!("sha256={}", hex::encode(hmac256(key, b"{}")));
        assert_eq!(
            verifier.verify(&headers(&[("x-hub-signature-256", &signature)]), b"{}", 0),
            Ok(())
        );
    }
    let other = format!("sha256={}", hex::encode(hmac256(b"other", b"{}")));
    assert_eq!(
        verifier.verify(&headers(&[("x-hub-signature-256", &other)]), b"{}", 0),
        Err(Rejection::Mismatch)
    );
}

#[test]
fn api_keys_are_checked_against_their_hashes() {
    let hash = apikey::hash("sk_live_123");
    let keys = ApiKeys::new(&[hash]);
    assert!(keys.required());
    assert_eq!(
        keys.check(&headers(&[("authorization", "Bearer sk_live_123")])),
        Ok(())
    );
    assert_eq!(
        keys.check(&headers(&[("x-api-key", "sk_live_123")])),
        Ok(())
    );
    assert_eq!(
        keys.check(&headers(&[("x-api-key", "sk_live_124")])),
        Err(Rejection::ApiKey)
    );
    assert_eq!(
        keys.check(&headers(&[("authorization", "Basic sk_live_123")])),
        Err(Rejection::ApiKey)
    );
    assert_eq!(keys.check(&HeaderMap::new()), Err(Rejection::ApiKey));
    assert!(!ApiKeys::new(&[]).required());
}

#[test]
fn secrets_are_read_by_name_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("SW"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("BAD"), "not-a-whsec-secret").unwrap();
    let secrets = SecretSource::new(dir.path());
    let ok = Verify::StandardWebhooks {
        secrets: vec!["SW".into()],
        tolerance: FIVE_MINUTES,
    };
    assert!(Verifier::new(&ok, &secrets).is_ok());
    let bad = Verify::StandardWebhooks {
        secrets: vec!["BAD".into()],
        tolerance: FIVE_MINUTES,
    };
    let err = Verifier::new(&bad, &secrets).err().unwrap();
    assert!(
        err.contains("BAD") && !err.contains("not-a-whsec-secret"),
        "{err}"
    );
    let missing = Verify::Github {
        secrets: vec!["NO_SUCH_SECRET_9431".into()],
    };
    assert!(
        Verifier::new(&missing, &secrets)
            .err()
            .unwrap()
            .contains("NO_SUCH_SECRET_9431")
    );
}

// --- Properties ---------------------------------------------------------------------

/// Headers that sign `body` with `key` under `verify` at `at`, as the sender would.
fn signed(verify: &Verify, key: &[u8], body: &[u8], at: i64) -> HeaderMap {
    match verify {
        Verify::StandardWebhooks { .. } => {
            let signature = BASE64.encode(hmac256(
                key,
                &[format!("msg_1.{at}.").as_bytes(), body].concat(),
            ));
            headers(&[
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &at.to_string()),
                ("webhook-signature", &format!("v1,{signature}")),
            ])
        }
        Verify::Stripe { .. } => {
            let signature =
                hex::encode(hmac256(key, &[format!("{at}.").as_bytes(), body].concat()));
            headers(&[("stripe-signature", &format!("t={at},v1={signature}"))])
        }
        Verify::Github { .. } => headers(&[(
            "x-hub-signature-256",
            &format!("sha256={}", hex::encode(hmac256(key, body))),
        )]),
        Verify::Shopify { .. } => {
            headers(&[("x-shopify-hmac-sha256", &BASE64.encode(hmac256(key, body)))])
        }
        Verify::Hmac(hmac) => {
            let signed = match &hmac.timestamp_header {
                Some(_) => [format!("{at}.").as_bytes(), body].concat(),
                None => body.to_vec(),
            };
            let mac = match hmac.algorithm {
                HmacAlgorithm::Sha256 => hmac256(key, &signed),
                HmacAlgorithm::Sha512 => hmac512(key, &signed),
            };
            let encoded = match hmac.encoding {
                SignatureEncoding::Hex => hex::encode(mac),
                SignatureEncoding::Base64 => BASE64.encode(mac),
            };
            let mut map = headers(&[(&hmac.header, &format!("{}{encoded}", hmac.prefix))]);
            if let Some(name) = &hmac.timestamp_header {
                map.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from(at),
                );
            }
            map
        }
    }
}

fn every_scheme() -> Vec<Verify> {
    vec![
        standard(),
        stripe(),
        Verify::Github {
            secrets: vec!["S".into()],
        },
        Verify::Shopify {
            secrets: vec!["S".into()],
        },
        generic(
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "sha256=",
            false,
        ),
        generic(HmacAlgorithm::Sha512, SignatureEncoding::Base64, "", true),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What the sender signs verifies; any change to one byte of the body does not.
    #[test]
    fn signed_bodies_verify_and_any_changed_byte_is_refused(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        body in proptest::collection::vec(any::<u8>(), 1..512),
        at in 1_000_000_000i64..2_000_000_000,
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        for verify in every_scheme() {
            let verifier = Verifier::with_keys(&verify, vec![key.clone()]);
            let request = signed(&verify, &key, &body, at);
            prop_assert_eq!(verifier.verify(&request, &body, at), Ok(()));
            let mut changed = body.clone();
            changed[flip.index(body.len())] ^= 1 << bit;
            prop_assert_eq!(verifier.verify(&request, &changed, at), Err(Rejection::Mismatch));
        }
    }

    /// Another key never verifies.
    #[test]
    fn another_key_is_refused(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        other in proptest::collection::vec(any::<u8>(), 1..64),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        prop_assume!(key != other);
        for verify in every_scheme() {
            let verifier = Verifier::with_keys(&verify, vec![other.clone()]);
            let request = signed(&verify, &key, &body, 1_700_000_000);
            prop_assert_eq!(verifier.verify(&request, &body, 1_700_000_000), Err(Rejection::Mismatch));
        }
    }

    /// Timestamps outside the tolerance are refused however well signed.
    #[test]
    fn stale_timestamps_are_refused(skew in 301i64..10_000_000, ahead in any::<bool>()) {
        let now = 1_700_000_000;
        let at = if ahead { now + skew } else { now - skew };
        for verify in [standard(), stripe(), generic(HmacAlgorithm::Sha256, SignatureEncoding::Hex, "", true)] {
            let verifier = Verifier::with_keys(&verify, vec![b"k".to_vec()]);
            let request = signed(&verify, b"k", b"{}", at);
            let verdict = verifier.verify(&request, b"{}", now);
            prop_assert!(matches!(verdict, Err(Rejection::Stale(..))), "{:?}", verdict);
        }
    }

    /// Arbitrary header values never panic and never verify.
    #[test]
    fn arbitrary_headers_never_verify(
        value in "[ -~]{0,200}",
        timestamp in "[ -~]{0,20}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        for verify in every_scheme() {
            let verifier = Verifier::with_keys(&verify, vec![b"k".to_vec()]);
            let request = headers(&[
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &timestamp),
                ("webhook-signature", &value),
                ("stripe-signature", &value),
                ("x-hub-signature-256", &value),
                ("x-shopify-hmac-sha256", &value),
                ("x-signature", &value),
                ("x-timestamp", &timestamp),
            ]);
            prop_assert!(verifier.verify(&request, &body, 1_700_000_000).is_err());
        }
    }

    /// Arbitrary API keys are refused unless they are the key.
    #[test]
    fn arbitrary_api_keys_are_refused(presented in "[!-~]{1,80}") {
        let keys = ApiKeys::new(&[apikey::hash("the-real-key")]);
        prop_assume!(presented != "the-real-key");
        prop_assert_eq!(keys.check(&headers(&[("x-api-key", &presented)])), Err(Rejection::ApiKey));
    }
}
