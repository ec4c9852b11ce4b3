//! Credentials: provider key formats (each with its own rule id), private key blocks, JWTs, credentials in
//! URLs and `Authorization` headers, and generic `password = ...` style assignments gated by Shannon entropy.
//! Placeholders (`AKIAIOSFODNN7EXAMPLE`, `xxxx`, `${VAR}`, `<your-key>`, `changeme` ...) are never reported.

use std::ops::Range;

use lifeguard_core::Category;

use crate::regexset::{PatternSpec, Validator};

pub(crate) const LABEL: &str = "SECRET";

/// (kind, regex, capture group, validator). Kind gives the rule id `secrets.<kind>`.
type Row = (&'static str, &'static str, usize, Validator);

/// Provider formats. Most have a fixed prefix, so the regex prefilter skips ordinary text quickly.
const PROVIDERS: &[Row] = &[
    (
        "private_key",
        r"-----BEGIN[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s:,]|\\[nr])*(?:-----END[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----)?",
        0,
        private_key,
    ),
    (
        "anthropic_api_key",
        r"\bsk-ant-(?:api|admin|sid)[0-9]{2}-[A-Za-z0-9_-]{20,200}",
        0,
        token,
    ),
    (
        "openai_api_key",
        r"\bsk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,250}",
        0,
        token,
    ),
    (
        "openai_api_key",
        r"\bsk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}\b",
        0,
        token,
    ),
    ("openai_api_key", r"\bsk-[A-Za-z0-9]{40,64}\b", 0, token),
    (
        "aws_access_key",
        r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
        0,
        token,
    ),
    (
        "aws_secret_key",
        r#"(?i)aws[A-Za-z0-9_. -]{0,30}["']?\s{0,3}(?::=|=>|=|:)\s{0,3}["']?([A-Za-z0-9/+=]{40})\b"#,
        1,
        token,
    ),
    (
        "aws_bedrock_api_key",
        r"\bABSK[A-Za-z0-9+/]{109,269}={0,2}",
        0,
        token,
    ),
    (
        "aws_bedrock_api_key",
        r"\bbedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29t[A-Za-z0-9+/=]{0,2000}",
        0,
        token,
    ),
    ("gcp_api_key", r"\bAIza[0-9A-Za-z_-]{35}", 0, token),
    (
        "gcp_service_account",
        r#""type"\s{0,3}:\s{0,3}"service_account""#,
        0,
        marker,
    ),
    (
        "gcp_oauth_client_secret",
        r"\bGOCSPX-[A-Za-z0-9_-]{28}\b",
        0,
        token,
    ),
    (
        "azure_storage_key",
        r"(?i)AccountKey=([A-Za-z0-9+/]{86}==)",
        1,
        token,
    ),
    (
        "azure_sas_token",
        r"(?i)[?&]sig=([A-Za-z0-9%+/]{40,100}(?:%3D|=){0,2})",
        1,
        token,
    ),
    (
        "azure_ad_client_secret",
        r"(?:^|[^A-Za-z0-9_~.-])([A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34})\b",
        1,
        token,
    ),
    ("github_pat", r"\bghp_[A-Za-z0-9]{36,255}\b", 0, token),
    ("github_oauth", r"\bgho_[A-Za-z0-9]{36,255}\b", 0, token),
    (
        "github_app_token",
        r"\b(?:ghu|ghs)_[A-Za-z0-9]{36,255}\b",
        0,
        token,
    ),
    (
        "github_refresh_token",
        r"\bghr_[A-Za-z0-9]{36,255}\b",
        0,
        token,
    ),
    (
        "github_fine_grained_pat",
        r"\bgithub_pat_[A-Za-z0-9_]{60,255}\b",
        0,
        token,
    ),
    (
        "gitlab_token",
        r"\b(?:glpat|gldt|glptt|glrt|glcbt|glimt|glagent|gloas|glsoat|glffct|glft|glcbt)-[A-Za-z0-9_.-]{20,300}",
        0,
        token,
    ),
    (
        "gitlab_runner_registration_token",
        r"\bGR1348941[A-Za-z0-9_-]{20}\b",
        0,
        token,
    ),
    (
        "gitlab_session_cookie",
        r"_gitlab_session=([0-9a-z]{32})",
        1,
        token,
    ),
    (
        "slack_bot_token",
        r"\bxoxb-[0-9]{10,13}-[0-9]{10,13}[A-Za-z0-9-]*",
        0,
        token,
    ),
    (
        "slack_user_token",
        r"\bxox[pe](?:-[0-9]{10,13}){3}-[A-Za-z0-9-]{28,34}",
        0,
        token,
    ),
    (
        "slack_legacy_token",
        r"\bxox[os]-[0-9]+-[0-9]+-[0-9]+-[A-Fa-f0-9]+",
        0,
        token,
    ),
    (
        "slack_legacy_workspace_token",
        r"\bxox[ar]-(?:[0-9]-)?[A-Za-z0-9]{8,48}",
        0,
        token,
    ),
    (
        "slack_legacy_bot_token",
        r"\bxoxb-[0-9]{8,14}-[A-Za-z0-9]{18,26}\b",
        0,
        token,
    ),
    (
        "slack_config_token",
        r"\bxoxe\.xox[bp]-[0-9]-[A-Za-z0-9]{100,}",
        0,
        token,
    ),
    (
        "slack_config_refresh_token",
        r"\bxoxe-[0-9]-[A-Za-z0-9]{100,}",
        0,
        token,
    ),
    (
        "slack_app_token",
        r"(?i)\bxapp-[0-9]-[A-Z0-9]+-[0-9]+-[a-z0-9]+",
        0,
        token,
    ),
    (
        "slack_webhook",
        r"(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,120}",
        0,
        token,
    ),
    (
        "microsoft_teams_webhook",
        r"https://[a-z0-9]+\.webhook\.office\.com/webhookb2/[a-z0-9-]{20,60}@[a-z0-9-]{20,60}/IncomingWebhook/[a-z0-9]{32}/[a-z0-9-]{20,60}",
        0,
        token,
    ),
    (
        "stripe_key",
        r"\b(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,99}\b",
        0,
        token,
    ),
    ("twilio_api_key", r"\bSK[0-9a-fA-F]{32}\b", 0, token),
    ("twilio_account_sid", r"\bAC[0-9a-f]{32}\b", 0, token),
    (
        "sendgrid_api_key",
        r"\bSG\.[A-Za-z0-9_-]{20,24}\.[A-Za-z0-9_-]{39,50}\b",
        0,
        token,
    ),
    (
        "sendinblue_api_key",
        r"\bxkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}\b",
        0,
        token,
    ),
    ("npm_token", r"\bnpm_[A-Za-z0-9]{36}\b", 0, token),
    (
        "pypi_token",
        r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
        0,
        token,
    ),
    ("rubygems_token", r"\brubygems_[a-f0-9]{48}\b", 0, token),
    ("clojars_token", r"(?i)\bCLOJARS_[a-z0-9]{60}\b", 0, token),
    ("huggingface_token", r"\bhf_[A-Za-z]{34}\b", 0, token),
    (
        "huggingface_org_token",
        r"\bapi_org_[A-Za-z]{34}\b",
        0,
        token,
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*",
        0,
        token,
    ),
    (
        "age_secret_key",
        r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b",
        0,
        token,
    ),
    (
        "onepassword_secret_key",
        r"\bA3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}\b",
        0,
        token,
    ),
    (
        "onepassword_service_token",
        r"\bops_eyJ[A-Za-z0-9+/]{250,}={0,3}",
        0,
        token,
    ),
    (
        "artifactory_token",
        r"\b(?:AKCp[A-Za-z0-9]{69}|cmVmdGtu[A-Za-z0-9]{56})\b",
        0,
        token,
    ),
    (
        "atlassian_api_token",
        r"\bATATT3[A-Za-z0-9_=-]{186}",
        0,
        token,
    ),
    (
        "authress_key",
        r"\b(?:sc|ext|scauth|authress)_[a-z0-9]{5,30}\.[a-z0-9]{4,6}\.acc[_-][a-z0-9-]{10,32}\.[A-Za-z0-9+/_=-]{30,120}",
        0,
        token,
    ),
    ("clickhouse_cloud_key", r"\b4b1d[A-Za-z0-9]{38}\b", 0, token),
    (
        "cloudflare_origin_ca_key",
        r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b",
        0,
        token,
    ),
    (
        "databricks_token",
        r"\bdapi[a-f0-9]{32}(?:-[0-9])?\b",
        0,
        token,
    ),
    (
        "digitalocean_token",
        r"\bdo[por]_v1_[a-f0-9]{64}\b",
        0,
        token,
    ),
    ("doppler_token", r"\bdp\.pt\.[A-Za-z0-9]{43}\b", 0, token),
    (
        "duffel_token",
        r"\bduffel_(?:test|live)_[A-Za-z0-9_=-]{43}",
        0,
        token,
    ),
    (
        "dynatrace_token",
        r"\bdt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}\b",
        0,
        token,
    ),
    ("easypost_token", r"\bEZ[AT]K[A-Za-z0-9]{54}\b", 0, token),
    (
        "flutterwave_key",
        r"\bFLW(?:PUB|SEC)K_TEST-[a-hA-H0-9]{32}-X\b|\bFLWSECK_TEST-?[a-hA-H0-9]{12}\b",
        0,
        token,
    ),
    (
        "flyio_token",
        r"\b(?:fo1_[A-Za-z0-9_-]{43}|fm1[ar]_[A-Za-z0-9+/]{100,}={0,3}|fm2_[A-Za-z0-9+/]{100,}={0,3})",
        0,
        token,
    ),
    ("frameio_token", r"\bfio-u-[A-Za-z0-9_=-]{64}", 0, token),
    (
        "grafana_token",
        r"\b(?:eyJrIjoi[A-Za-z0-9]{70,400}={0,3}|glc_[A-Za-z0-9+/]{32,400}={0,3}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})",
        0,
        token,
    ),
    (
        "harness_token",
        r"\b(?:pat|sat)\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{20}\b",
        0,
        token,
    ),
    (
        "hashicorp_tf_token",
        r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}",
        0,
        token,
    ),
    ("heroku_token", r"\bHRKU-AA[0-9A-Za-z_-]{58}", 0, token),
    ("infracost_token", r"\bico-[A-Za-z0-9]{32}\b", 0, token),
    ("linear_token", r"\blin_api_[A-Za-z0-9]{40}\b", 0, token),
    ("mailchimp_key", r"\b[a-f0-9]{32}-us[0-9]{1,2}\b", 0, token),
    ("mailgun_key", r"\b(?:key|pubkey)-[a-f0-9]{32}\b", 0, token),
    (
        "mapbox_token",
        r"\b(?:pk|sk)\.[A-Za-z0-9]{60,90}\.[A-Za-z0-9_-]{22}\b",
        0,
        token,
    ),
    (
        "newrelic_key",
        r"\b(?:NRAK-[A-Za-z0-9]{27}|NRJS-[a-f0-9]{19}|NRII-[A-Za-z0-9-]{32})\b",
        0,
        token,
    ),
    (
        "lob_key",
        r"\b(?:live|test)_(?:pub_[a-f0-9]{31}|[a-f0-9]{35})\b",
        0,
        token,
    ),
    (
        "notion_token",
        r"\bntn_[0-9]{11}[A-Za-z0-9]{32}[A-Za-z0-9]{3}\b",
        0,
        token,
    ),
    ("octopus_deploy_key", r"\bAPI-[A-Z0-9]{26}\b", 0, token),
    ("openshift_token", r"\bsha256~[A-Za-z0-9_-]{43}", 0, token),
    ("perplexity_key", r"\bpplx-[A-Za-z0-9]{48}\b", 0, token),
    (
        "planetscale_token",
        r"\bpscale_(?:tkn|oauth|pw)_[A-Za-z0-9_=.-]{32,64}",
        0,
        token,
    ),
    (
        "postman_token",
        r"\bPMAK-[a-fA-F0-9]{24}-[a-fA-F0-9]{34}\b",
        0,
        token,
    ),
    ("prefect_token", r"\bpnu_[A-Za-z0-9]{36}\b", 0, token),
    ("pulumi_token", r"\bpul-[a-f0-9]{40}\b", 0, token),
    ("readme_token", r"\brdme_[a-z0-9]{70}\b", 0, token),
    ("scalingo_token", r"\btk-us-[A-Za-z0-9_-]{48}", 0, token),
    (
        "sentry_token",
        r"\b(?:sntrys_eyJ[A-Za-z0-9+/=_]{60,400}|sntryu_[a-f0-9]{64}\b)",
        0,
        token,
    ),
    (
        "settlemint_token",
        r"\bsm_(?:aat|pat|sat)_[A-Za-z0-9]{16}\b",
        0,
        token,
    ),
    (
        "shippo_token",
        r"\bshippo_(?:live|test)_[a-fA-F0-9]{40}\b",
        0,
        token,
    ),
    (
        "shopify_token",
        r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",
        0,
        token,
    ),
    (
        "sidekiq_secret",
        r"(?i)\bBUNDLE_(?:ENTERPRISE__CONTRIBSYS__COM|GEMS__CONTRIBSYS__COM)[A-Za-z_]{0,10}[\x22\x27]?\s{0,3}(?::=|=>|=|:|,)?\s{0,3}[\x22\x27]?([a-f0-9]{8}:[a-f0-9]{8})\b",
        1,
        token,
    ),
    (
        "sourcegraph_token",
        r"\bsgp_(?:[a-fA-F0-9]{16}|local)_[a-fA-F0-9]{40}\b",
        0,
        token,
    ),
    (
        "square_token",
        r"\b(?:EAAA[A-Za-z0-9_-]{22,60}|sq0atp-[A-Za-z0-9_-]{22}|sq0csp-[A-Za-z0-9_-]{43})",
        0,
        token,
    ),
    (
        "telegram_bot_token",
        r"\b[0-9]{5,16}:A[A-Za-z0-9_-]{34}\b",
        0,
        token,
    ),
    (
        "vault_token",
        r"\b(?:hvs\.[A-Za-z0-9_-]{90,120}|hvb\.[A-Za-z0-9_-]{138,300})",
        0,
        token,
    ),
    (
        "yandex_token",
        r"\b(?:t1\.[A-Za-z0-9_-]+=*\.[A-Za-z0-9_-]{86}=*|AQVN[A-Za-z0-9_-]{35,38}|YC[A-Za-z0-9_-]{38})\b",
        0,
        token,
    ),
    ("facebook_token", r"\bEAA[MC][A-Za-z0-9]{100,}", 0, token),
    (
        "discord_token",
        r"\b[MN][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38}\b",
        0,
        token,
    ),
    (
        "url_credentials",
        r"\b[a-z][a-z0-9+.-]{1,20}://[A-Za-z0-9._~%!$&'()*+,;=-]{1,64}:([A-Za-z0-9._~%!$&'()*+,;=-]{3,128})@[A-Za-z0-9.-]{3,}",
        1,
        password,
    ),
    (
        "facebook_app_token",
        r"\b[0-9]{15,16}\|[A-Za-z0-9_-]{27}\b",
        0,
        token,
    ),
    (
        "intra42_secret",
        r"\bs-s4t2(?:ud|af)-[a-f0-9]{64}\b",
        0,
        token,
    ),
    ("adobe_client_secret", r"\bp8e-[A-Za-z0-9]{32}\b", 0, token),
    (
        "authorization_header",
        r#"(?i)\bauthorization["']?\s{0,3}[:=]\s{0,3}["']?(?:(?:bearer|basic|token|apikey|api-key|api-token|digest|[a-z-]{0,12}token)\s{1,3})?([A-Za-z0-9._~+/=-]{8,2048})"#,
        1,
        token,
    ),
    (
        "curl_basic_auth",
        r#"(?i)\bcurl\b(?s:.){0,300}?\s(?:-u|--user)\s{1,5}["']?([A-Za-z0-9._~%!$&*+=@-]{0,64}:["']?[A-Za-z0-9._~%!$&*+=@#-]{3,128})"#,
        1,
        curl_user,
    ),
];

/// Generic assignments: a key name that says "secret" followed by a value. Last in the set, so at the same start
/// a provider format wins; when this one matches first, provider formats inside its value are preferred.
const GENERIC: &[Row] = &[(
    "generic_secret",
    r#"(?i)\b[a-z0-9_.-]{0,40}(?:secret|passwd|password|passphrase|pwd|token|api_?key|api-key|access_?key|auth_?key|private_?key|credentials?|auth|key|pass|creds|login)(?:[a-z]{0,3}|string|value|str|val)[_.-]?[0-9]{0,6}["'\]]{0,2}[ \t]{0,3}(?:[:=]{1,3}>?|\?=|,)[ \t]{0,3}(?:new[ \t]+)?(?:String\(|str\()?["'`]?[A-Za-z0-9_.~+/=@!$%^&*#?:|\x80-\xFF-]{8,300}"#,
    0,
    generic,
)];

pub(crate) fn specs() -> Vec<PatternSpec> {
    let row = |(kind, regex, group, v): &Row, generic: bool| PatternSpec {
        rule: format!("secrets.{kind}"),
        family: (*kind).to_string(),
        label: LABEL.to_string(),
        category: Category::Secrets,
        regex: (*regex).to_string(),
        group: *group,
        validate: Some(*v),
        generic,
        try_alternatives: false,
        weight: 1.0,
    };
    PROVIDERS
        .iter()
        .map(|r| row(r, false))
        .chain(GENERIC.iter().map(|r| row(r, true)))
        .collect()
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(s: &str) -> f32 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f32;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = c as f32 / n;
            -p * p.log2()
        })
        .sum()
}

/// Values that stand for a secret without being one.
pub(crate) fn is_placeholder(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    // Markers nobody puts in a real secret.
    const STRONG: &[&str] = &[
        "example",
        "changeme",
        "change_me",
        "change-me",
        "placeholder",
        "your_",
        "your-",
        "yourkey",
        "yoursecret",
        "yourtoken",
        "yourpassword",
        "redacted",
        "notreal",
        "not_real",
        "xxxx",
        "****",
        "....",
        "<",
        "${",
        "{{",
        "$(",
        "%(",
        "env[",
        "process.env",
        "os.environ",
        "getenv",
        "secret_here",
        "token_here",
        "key_here",
        "password_here",
    ];
    // Words and runs that a long random token may contain by chance: only trusted in short values.
    const WEAK: &[&str] = &[
        "dummy", "sample", "insert", "replace", "fake", "abcdef", "123456", "abc123", "123abc",
        "qwerty", "####", "here",
    ];
    if STRONG.iter().any(|w| l.contains(w)) || (v.len() <= 48 && WEAK.iter().any(|w| l.contains(w)))
    {
        return true;
    }
    // Typed-in sequences (abcdef, 123456, klmnop) do not occur in generated secrets.
    let b = l.as_bytes();
    let mut run = 1;
    for i in 1..b.len() {
        if b[i].is_ascii_alphanumeric() && b[i] == b[i - 1].wrapping_add(1) {
            run += 1;
            if run >= 6 {
                return true;
            }
        } else {
            run = 1;
        }
    }
    // One repeated character, or a value made of a few characters over and over (xXxX, 0000, abababab).
    let distinct = {
        let mut seen = [false; 256];
        v.bytes()
            .filter(|b| !std::mem::replace(&mut seen[*b as usize], true))
            .count()
    };
    distinct <= 3
}

fn token(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let v = hay.get(span.clone())?;
    if is_placeholder(v) {
        return None;
    }
    // `video_box.ico-7a38...png`: a token right after a dot is part of a file or host name.
    if span.start > 0 && hay.as_bytes()[span.start - 1] == b'.' {
        return None;
    }
    // Provider tokens are random: a long run of one class with almost no variety is a template.
    if v.len() >= 16 && entropy(v) < 2.5 {
        return None;
    }
    Some(span)
}

fn private_key(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let v = hay.get(span.clone())?;
    let body_start = v
        .find("-----")
        .and_then(|i| v[i + 5..].find("-----").map(|j| i + 10 + j))?;
    let body = &v[body_start..];
    let body = body.split("-----END").next().unwrap_or(body);
    let b64 = body
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .count();
    // A header with no key material ("-----BEGIN PRIVATE KEY-----\n...") is documentation.
    if b64 < 32 || is_placeholder(body.trim()) {
        return None;
    }
    // Trailing prose swallowed by a block without footer is not part of the key.
    let trimmed = v.trim_end();
    Some(span.start..span.start + trimmed.len())
}

/// A fixed marker that only appears next to a credential (a service-account JSON).
fn marker(_hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    Some(span)
}

fn password(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let v = hay.get(span.clone())?;
    if is_placeholder(v) || v.len() < 3 {
        return None;
    }
    let l = v.to_ascii_lowercase();
    if matches!(
        l.as_str(),
        "password" | "pass" | "secret" | "pwd" | "passwd"
    ) {
        return None;
    }
    Some(span)
}

fn curl_user(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let v = hay.get(span.clone())?;
    let (_, pass) = v.split_once(':')?;
    if pass.len() < 3 || is_placeholder(pass) || pass.starts_with('$') {
        return None;
    }
    let l = pass.trim_matches(['"', '\'']).to_ascii_lowercase();
    if l.contains("password")
        || l.contains("passwd")
        || matches!(
            l.as_str(),
            "pass" | "token" | "secret" | "apikey" | "api_key" | "key"
        )
        || l.starts_with(['$', '<', '{', '['])
    {
        return None;
    }
    Some(span)
}

#[inline]
fn is_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80 || b"_.~+/=@!$%^&*#?:|-".contains(&b)
}

/// Key names that hold something next to a secret rather than the secret (`credentialsId`, `key_name`).
const KEY_SUFFIXES_NOT_SECRET: &[&str] = &[
    "id", "ids", "name", "url", "uri", "file", "path", "type", "size", "length", "len", "count",
    "format", "version", "hash", "event", "mode", "field", "prefix", "header", "env",
];

/// A generic `key = value`: the key must name a secret and the value must look random, not like a word, a
/// path, a version, a host name, a number or an identifier.
fn generic(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let m = hay.get(span.clone())?;
    let b = m.as_bytes();
    // key, then quotes/brackets/spaces, separator, spaces, optional `new String(` and a quote, then the value.
    let key_end = b
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')))?;
    let key = m[..key_end].to_ascii_lowercase();
    let mut i = key_end;
    while i < b.len() && matches!(b[i], b'"' | b'\'' | b']' | b' ' | b'\t') {
        i += 1;
    }
    while i < b.len() && matches!(b[i], b':' | b'=' | b'>' | b'?' | b',') {
        i += 1;
    }
    let rest = m[i..].trim_start_matches([' ', '\t']);
    let rest = rest
        .strip_prefix("new ")
        .unwrap_or(rest)
        .trim_start_matches("String(")
        .trim_start_matches("str(")
        .trim_start_matches(['"', '\'', '`']);
    let value_start = span.start + (m.len() - rest.len());
    let vlen = rest.bytes().take_while(|c| is_value_byte(*c)).count();
    let v = rest[..vlen].trim_end_matches(['.', ',', ';', '?', '!', '*', '#']);
    if v.ends_with("..") || rest[..vlen].ends_with("..") || is_placeholder(&rest[..vlen]) {
        // Elided in the text ("ops_eyJzaWdu...") : a reference to a secret, not the secret.
        return None;
    }
    let end = value_start + v.len();
    if [
        "public",
        "pubkey",
        "csrf",
        "xsrf",
        "primarykey",
        "primary_key",
        "foreignkey",
        "foreign_key",
        "sortkey",
        "sort_key",
    ]
    .iter()
    .any(|k| key.contains(k))
        || key.starts_with("pub_")
    {
        return None;
    }
    let bare_key =
        key.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_' || c == '-' || c == '.');
    if KEY_SUFFIXES_NOT_SECRET
        .iter()
        .any(|s| bare_key.ends_with(s))
        && !bare_key.ends_with("pwd")
    {
        return None;
    }
    if v.len() < 10 || is_placeholder(v) || v.starts_with('$') {
        return None;
    }
    // Where a provider format exists, its own pattern decides (a rejected `xoxp-1234-...` is no secret).
    const PROVIDER_PREFIXES: &[&str] = &[
        "xox",
        "xapp-",
        "sk-ant-",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "glpat-",
        "akia",
        "asia",
        "aiza",
        "hf_",
        "npm_",
        "pypi-",
        "sg.",
        "sk_live_",
        "rk_live_",
        "sk_test_",
        "eyj",
    ];
    let vl = v.to_ascii_lowercase();
    if PROVIDER_PREFIXES.iter().any(|p| vl.starts_with(p)) {
        return None;
    }
    // `123456:A...` is a Telegram bot token shape; the Telegram pattern checks the bot id.
    if let Some((id, rest)) = v.split_once(':')
        && !id.is_empty()
        && id.bytes().all(|c| c.is_ascii_digit())
        && rest.starts_with('A')
    {
        return None;
    }
    let lower = v.bytes().filter(u8::is_ascii_lowercase).count();
    let upper = v.bytes().filter(u8::is_ascii_uppercase).count();
    let digit = v.bytes().filter(u8::is_ascii_digit).count();
    if v.starts_with("http") || v.starts_with('/') || v.starts_with("./") || v.starts_with("~/") {
        return None;
    }
    // Versions (`jjwt-0.11.2`), dotted identifiers and host names (`XSalsa20.key_length`, `a.b.example.com`).
    let segs: Vec<&str> = v.split('.').collect();
    if segs.len() >= 2 {
        let last = segs[segs.len() - 1];
        let prev = segs[segs.len() - 2];
        if !last.is_empty()
            && last.bytes().all(|c| c.is_ascii_digit())
            && prev.bytes().last().is_some_and(|c| c.is_ascii_digit())
            && last.len() <= 4
        {
            return None;
        }
        let ident = |p: &str| {
            p.bytes()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        };
        if segs.iter().all(|p| ident(p))
            && last.bytes().all(|c| c.is_ascii_alphabetic() || c == b'_')
        {
            return None;
        }
    }
    // Names made of words (`NEXUS-GPT4-API-KEY`, `DOC_Vector_5_32`, `env/cert.p12`): half the parts are words.
    let mut parts: Vec<&str> = v
        .split(['-', '_', '.', '/', ':', '@', '='])
        .filter(|p| !p.is_empty())
        .collect();
    // A short leading part before a long random body is a token prefix (`pnu_`, `q-`), not a word.
    if parts.len() >= 3 && parts[0].len() <= 4 && parts.iter().any(|p| p.len() >= 16) {
        parts.remove(0);
    }
    if parts.len() >= 2 {
        let word_bytes: usize = parts
            .iter()
            .filter(|p| p.len() >= 2 && p.bytes().all(|c| c.is_ascii_alphabetic()))
            .map(|p| p.len())
            .sum();
        if word_bytes * 2 >= v.len() {
            return None;
        }
    }
    // A word or an identifier without digits is a name, unless long, mixed-case and random.
    if digit == 0 {
        let classes = usize::from(lower > 0) + usize::from(upper > 0);
        if classes < 2 || v.len() < 20 || entropy(v) < 3.8 {
            return None;
        }
    }
    // Only digits: long enough to be a token, not a date, a port or a count.
    if digit == v.len() && v.len() < 16 {
        return None;
    }
    let needed = if digit == v.len() {
        2.5
    } else if v.len() >= 20 {
        3.2
    } else {
        3.0
    };
    if entropy(v) < needed {
        return None;
    }
    Some(value_start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_constant() {
        assert!(entropy("aaaa") < 0.01);
        assert!((entropy("abcd") - 2.0).abs() < 1e-5);
    }

    #[test]
    fn placeholders() {
        for p in [
            "AKIAIOSFODNN7EXAMPLE",
            "xxxxxxxxxxxx",
            "${API_KEY}",
            "<your-key>",
            "changeme",
        ] {
            assert!(is_placeholder(p), "{p}");
        }
        assert!(!is_placeholder("gcdq1uvt-1_kyzassupjm2206v7r1zq_"));
    }
}
