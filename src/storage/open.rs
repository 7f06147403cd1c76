//! Opening the object store that `storage.url` names: the one `match` over schemes.

use std::{collections::BTreeMap, sync::Arc};

use object_store::{memory::InMemory, path::Path as ObjectPath, ObjectStore};

/// An opened object store, the key prefix inside it, and how to show it without credentials.
pub(super) struct Opened {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix from the URL's path (`s3://bucket/PREFIX`).
    pub prefix: ObjectPath,
    /// `scheme://bucket/prefix`: what errors and logs show.
    pub shown: String,
}

/// The schemes this build can open, for the error naming them.
fn supported() -> Vec<&'static str> {
    let mut schemes = vec!["memory"];
    if cfg!(feature = "aws") {
        schemes.push("s3");
    }
    if cfg!(feature = "gcp") {
        schemes.push("gs");
    }
    if cfg!(feature = "azure") {
        schemes.push("az");
    }
    schemes
}

/// Opens `url` with `options` passed to its builder. Credentials come from the environment
/// as object_store reads them; a URL carrying them is refused, so no error can quote them.
pub(super) fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Opened, String> {
    // The parser's error never quotes the input.
    let parsed = url::Url::parse(url).map_err(|e| format!("storage.url is not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
        return Err(
            "storage.url must not carry credentials or a query: set them in the environment \
             (AWS_ACCESS_KEY_ID, ...) or in storage.options"
                .into(),
        );
    }
    let scheme = parsed.scheme().to_ascii_lowercase();
    let bucket = parsed.host_str().unwrap_or_default().to_string();
    let prefix = ObjectPath::parse(parsed.path().trim_matches('/'))
        .map_err(|e| format!("storage.url has a path that is not a valid key prefix: {e}"))?;
    let shown = format!("{scheme}://{bucket}/{prefix}")
        .trim_end_matches('/')
        .to_string();
    let unknown =
        |key: &str| format!("storage.options: `{key}` is not a setting of {scheme}:// stores");
    let failed = |e: object_store::Error| format!("cannot open {shown}: {e}");
    let store: Arc<dyn ObjectStore> = match scheme.as_str() {
        "memory" => Arc::new(InMemory::new()),
        #[cfg(feature = "aws")]
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let mut builder = AmazonS3Builder::from_env().with_url(url);
            for (key, value) in options {
                let parsed: AmazonS3ConfigKey =
                    key.to_ascii_lowercase().parse().map_err(|_| unknown(key))?;
                builder = builder.with_config(parsed, value);
            }
            Arc::new(builder.build().map_err(failed)?)
        }
        #[cfg(feature = "gcp")]
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let mut builder = GoogleCloudStorageBuilder::from_env().with_url(url);
            for (key, value) in options {
                let parsed: GoogleConfigKey =
                    key.to_ascii_lowercase().parse().map_err(|_| unknown(key))?;
                builder = builder.with_config(parsed, value);
            }
            Arc::new(builder.build().map_err(failed)?)
        }
        #[cfg(feature = "azure")]
        "az" | "azure" | "abfs" | "abfss" => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let mut builder = MicrosoftAzureBuilder::from_env().with_url(url);
            for (key, value) in options {
                let parsed: AzureConfigKey =
                    key.to_ascii_lowercase().parse().map_err(|_| unknown(key))?;
                builder = builder.with_config(parsed, value);
            }
            Arc::new(builder.build().map_err(failed)?)
        }
        other => {
            return Err(format!(
                "storage.url: `{other}://` is not a store this build can open; it supports {}:// \
                 (or leave storage.url unset for the local output.dir)",
                supported().join("://, ")
            ))
        }
    };
    if scheme == "memory" && !options.is_empty() {
        return Err(unknown(options.keys().next().map_or("", String::as_str)));
    }
    Ok(Opened {
        store,
        prefix,
        shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_and_unknown_schemes_are_refused_without_quoting_secrets() {
        let none = BTreeMap::new();
        let err = open("s3://AKIA:SENTINEL-secret@bucket/p", &none)
            .err()
            .unwrap();
        assert!(!err.contains("SENTINEL"), "{err}");
        let err = open("ftp://host/x", &none).err().unwrap();
        assert!(err.contains("memory"), "{err}");
        let opened = open("memory:///some/prefix", &none).ok().unwrap();
        assert_eq!(opened.prefix.as_ref(), "some/prefix");
        assert_eq!(opened.shown, "memory:///some/prefix");
    }

    #[cfg(feature = "aws")]
    #[test]
    fn s3_options_are_checked_and_never_shown() {
        let mut options = BTreeMap::new();
        options.insert("endpoint".to_string(), "http://127.0.0.1:9".to_string());
        options.insert("region".to_string(), "us-east-1".to_string());
        options.insert("allow_http".to_string(), "true".to_string());
        options.insert(
            "secret_access_key".to_string(),
            "SENTINEL-secret".to_string(),
        );
        options.insert("access_key_id".to_string(), "AKIA".to_string());
        let opened = open("s3://bucket/pre/fix", &options).ok().unwrap();
        assert_eq!(opened.shown, "s3://bucket/pre/fix");
        assert!(!format!("{} {:?}", opened.store, opened.store).contains("SENTINEL"));
        options.insert("no_such_setting".to_string(), "x".to_string());
        let err = open("s3://bucket", &options).err().unwrap();
        assert!(
            err.contains("no_such_setting") && !err.contains("SENTINEL"),
            "{err}"
        );
    }
}
