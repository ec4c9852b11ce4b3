//! Reading bundle files and turning their YAML into raw structs, keeping where each item came from.
//!
//! Each section and each list element is deserialised on its own, so one bad key does not hide the problems
//! of the others: `validate` can report every problem at once, each with its file, line and YAML path.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_norway::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::raw::*;

/// Largest bundle file we read; a policy bundle is configuration, not data.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Largest sum of all files of a bundle directory.
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;

/// One problem found in a bundle, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    /// YAML path, e.g. `keys[3].models`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The text of one bundle file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// Reads a bundle file, or every `*.yaml` / `*.yml` file of a directory (sorted by name; hidden entries such as a
/// ConfigMap's `..data` are followed only through the visible symlinks that point into them).
pub fn read_sources(path: &Path) -> Result<Vec<SourceFile>, Vec<Problem>> {
    let shown = path.display().to_string();
    let fail = |message: String| {
        vec![Problem {
            file: shown.clone(),
            line: None,
            path: String::new(),
            message,
        }]
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| fail(format!("cannot list: {e}")))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if is_yaml && !name.starts_with('.') {
                files.push(entry.path());
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(fail("directory holds no .yaml or .yml file".into()));
        }
    } else {
        files.push(path.to_path_buf());
    }
    let mut total = 0u64;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let problem = |message: String| Problem {
            file: name.clone(),
            line: None,
            path: String::new(),
            message,
        };
        let size = match std::fs::metadata(&file) {
            Ok(m) => m.len(),
            Err(e) => {
                problems.push(problem(format!("cannot read: {e}")));
                continue;
            }
        };
        total += size;
        if size > MAX_FILE_BYTES || total > MAX_TOTAL_BYTES {
            problems.push(problem(format!(
                "file too large ({size} bytes; a bundle file may have at most {MAX_FILE_BYTES}, a bundle {MAX_TOTAL_BYTES})"
            )));
            continue;
        }
        match std::fs::read(&file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => out.push(SourceFile {
                    name: name.clone(),
                    text,
                }),
                Err(e) => problems.push(problem(format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ))),
            },
            Err(e) => problems.push(problem(format!("cannot read: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Where a raw item came from: the file (index into the sources) and its YAML path there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loc {
    pub file: usize,
    pub path: String,
}

/// The raw bundle merged from all its files, with the origin of every list element and provider.
#[derive(Debug, Default)]
pub struct Parsed {
    pub bundle: RawBundle,
    pub keys: Vec<Loc>,
    pub jwt: Vec<Loc>,
    pub routes: Vec<Loc>,
    pub custom: Vec<Loc>,
    pub providers: HashMap<String, Loc>,
    /// Location of top-level scalars and sections (`version`, `name`, `defaults`, `detectors.pii`, ...).
    pub sections: HashMap<String, Loc>,
    pub(crate) files: Vec<FileIndex>,
}

/// Path -> line of every node of one file, for pointing problems at their line. Built only when a problem is
/// reported: a valid 100,000-key bundle should not pay for a second YAML parse.
#[derive(Debug, Default)]
pub(crate) struct FileIndex {
    pub name: String,
    text: String,
    lines: std::cell::OnceCell<HashMap<String, usize>>,
}

impl FileIndex {
    fn new(name: &str, text: &str) -> Self {
        FileIndex {
            name: name.to_string(),
            text: text.to_string(),
            lines: std::cell::OnceCell::new(),
        }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let lines = self.lines.get_or_init(|| line_index(&self.text));
        let mut p = path;
        loop {
            if let Some(line) = lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

impl Parsed {
    /// A problem at `loc` + `sub` (a path below it, may be empty).
    pub fn problem(&self, loc: &Loc, sub: &str, message: impl Into<String>) -> Problem {
        let path = join(&loc.path, sub);
        let file = self.files.get(loc.file);
        Problem {
            file: file.map(|f| f.name.clone()).unwrap_or_default(),
            line: file.and_then(|f| f.line(&path)),
            path,
            message: message.into(),
        }
    }

    /// A problem at a top-level section (or somewhere below it).
    pub fn section_problem(&self, section: &str, sub: &str, message: impl Into<String>) -> Problem {
        let loc = self.sections.get(section).cloned().unwrap_or(Loc {
            file: 0,
            path: section.to_string(),
        });
        self.problem(&loc, sub, message)
    }
}

fn join(base: &str, sub: &str) -> String {
    match (base.is_empty(), sub.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => sub.to_string(),
        (false, false) if sub.starts_with('[') => format!("{base}{sub}"),
        (false, false) => format!("{base}.{sub}"),
    }
}

/// Parses and merges the files of a bundle. Returns what could be read and every problem met.
pub fn parse(sources: &[SourceFile]) -> (Parsed, Vec<Problem>) {
    // Fast path: a single file that deserialises straight into the typed bundle needs no intermediate YAML
    // tree, which for a 100,000-key bundle halves both the time and the peak memory of a (re)load. Anything
    // that does not fit takes the slow path below, which finds every problem with its line.
    if let [only] = sources
        && let Ok(bundle) = serde_norway::from_str::<RawBundle>(&only.text)
    {
        return (typed(bundle, only), Vec::new());
    }
    let mut parsed = Parsed::default();
    let mut problems = Vec::new();
    let mut version: Option<(u32, Loc)> = None;
    let mut name: Option<(String, Loc)> = None;
    for (file_no, source) in sources.iter().enumerate() {
        let value: Value = match serde_norway::from_str(&source.text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem {
                    file: source.name.clone(),
                    line: e.location().map(|l| l.line()),
                    path: String::new(),
                    message: format!("invalid YAML: {e}"),
                });
                // Not indexed: serde could not parse it, so neither could the indexer.
                parsed.files.push(FileIndex::new(&source.name, ""));
                continue;
            }
        };
        parsed
            .files
            .push(FileIndex::new(&source.name, &source.text));
        let here = |path: &str| Loc {
            file: file_no,
            path: path.to_string(),
        };
        let map = match value {
            Value::Mapping(m) => m,
            Value::Null => continue,
            _ => {
                problems.push(parsed.problem(&here(""), "", "a bundle must be a YAML mapping"));
                continue;
            }
        };
        for (k, v) in map {
            let Some(key) = k.as_str().map(str::to_string) else {
                problems.push(parsed.problem(&here(""), "", "top-level keys must be strings"));
                continue;
            };
            let loc = here(&key);
            match key.as_str() {
                "version" => {
                    if let Some(x) = item::<u32>(&parsed, &loc, v, &mut problems) {
                        merge_scalar(&parsed, &mut version, x, loc, &mut problems);
                    }
                }
                "name" => {
                    if let Some(x) = item::<String>(&parsed, &loc, v, &mut problems) {
                        merge_scalar(&parsed, &mut name, x, loc, &mut problems);
                    }
                }
                "defaults" => {
                    if let Some(d) = item::<RawDefaults>(&parsed, &loc, v, &mut problems) {
                        merge_defaults(&mut parsed, d, loc, &mut problems);
                    }
                }
                "providers" => {
                    for (name, p) in entries(&parsed, &loc, v, &mut problems) {
                        let ploc = here(&format!("providers.{name}"));
                        if let Some(prev) = parsed.providers.get(&name) {
                            let prev = parsed.problem(prev, "", "");
                            problems.push(parsed.problem(
                                &ploc,
                                "",
                                format!("provider {name:?} is also defined at {}:{}", prev.file, prev.line.unwrap_or(0)),
                            ));
                            continue;
                        }
                        if let Some(p) = item::<RawProvider>(&parsed, &ploc, p, &mut problems) {
                            parsed.bundle.providers.insert(name.clone(), p);
                            parsed.providers.insert(name, ploc);
                        }
                    }
                }
                "keys" => list(&mut parsed, &loc, v, &mut problems, |p, x, l| {
                    p.bundle.keys.push(x);
                    p.keys.push(l);
                }),
                "jwt" => list(&mut parsed, &loc, v, &mut problems, |p, x, l| {
                    p.bundle.jwt.push(x);
                    p.jwt.push(l);
                }),
                "routes" => list(&mut parsed, &loc, v, &mut problems, |p, x, l| {
                    p.bundle.routes.push(x);
                    p.routes.push(l);
                }),
                "detectors" => parse_detectors(&mut parsed, &loc, v, &mut problems),
                "candidate" => {
                    if let Some(c) = item::<String>(&parsed, &loc, v, &mut problems) {
                        parsed.bundle.candidate = Some(c);
                        parsed.sections.insert("candidate".into(), loc);
                    }
                }
                other => problems.push(parsed.problem(
                    &loc,
                    "",
                    format!(
                        "unknown field `{other}`, expected one of `version`, `name`, `defaults`, `providers`, `keys`, `jwt`, `routes`, `detectors`, `candidate`"
                    ),
                )),
            }
        }
    }
    let first = Loc::default();
    match version {
        Some((v, loc)) => {
            parsed.bundle.version = v;
            parsed.sections.insert("version".into(), loc);
        }
        None if !sources.is_empty() && problems.is_empty() => {
            problems.push(parsed.problem(&first, "version", "missing: set `version: 1`"))
        }
        None => {}
    }
    match name {
        Some((n, loc)) => {
            parsed.bundle.name = n;
            parsed.sections.insert("name".into(), loc);
        }
        None if !sources.is_empty() && problems.is_empty() => {
            problems.push(parsed.problem(&first, "name", "missing: give the bundle a name"))
        }
        None => {}
    }
    (parsed, problems)
}

/// The locations of a bundle parsed in one go (one file): list elements and providers at their natural paths.
fn typed(bundle: RawBundle, source: &SourceFile) -> Parsed {
    let at = |path: String| Loc { file: 0, path };
    let list = |name: &str, n: usize| (0..n).map(|i| at(format!("{name}[{i}]"))).collect();
    Parsed {
        keys: list("keys", bundle.keys.len()),
        jwt: list("jwt", bundle.jwt.len()),
        routes: list("routes", bundle.routes.len()),
        custom: list("detectors.custom", bundle.detectors.custom.len()),
        providers: bundle
            .providers
            .keys()
            .map(|n| (n.clone(), at(format!("providers.{n}"))))
            .collect(),
        // Both are required by the typed bundle, so they are there.
        sections: ["version", "name"]
            .into_iter()
            .map(|k| (k.to_string(), at(k.to_string())))
            .collect(),
        files: vec![FileIndex::new(&source.name, &source.text)],
        bundle,
    }
}

fn parse_detectors(parsed: &mut Parsed, loc: &Loc, v: Value, problems: &mut Vec<Problem>) {
    for (key, value) in entries(parsed, loc, v, problems) {
        let sloc = Loc {
            file: loc.file,
            path: format!("detectors.{key}"),
        };
        let d = &mut parsed.bundle.detectors;
        let taken = match key.as_str() {
            "injection" => d.injection.is_some(),
            "jailbreak" => d.jailbreak.is_some(),
            "pii" => d.pii.is_some(),
            "secrets" => d.secrets.is_some(),
            "tool_calls" => d.tool_calls.is_some(),
            "redaction_key" => d.redaction_key.is_some(),
            _ => false,
        };
        if taken {
            problems.push(parsed.problem(&sloc, "", "set in more than one file"));
            continue;
        }
        match key.as_str() {
            "injection" => parsed.bundle.detectors.injection = item(parsed, &sloc, value, problems),
            "jailbreak" => parsed.bundle.detectors.jailbreak = item(parsed, &sloc, value, problems),
            "pii" => parsed.bundle.detectors.pii = item(parsed, &sloc, value, problems),
            "secrets" => parsed.bundle.detectors.secrets = item(parsed, &sloc, value, problems),
            "tool_calls" => {
                parsed.bundle.detectors.tool_calls = item(parsed, &sloc, value, problems)
            }
            "redaction_key" => {
                parsed.bundle.detectors.redaction_key = item(parsed, &sloc, value, problems)
            }
            "custom" => list(parsed, &sloc, value, problems, |p, x, l| {
                p.bundle.detectors.custom.push(x);
                p.custom.push(l);
            }),
            other => {
                problems.push(parsed.problem(
                    &sloc,
                    "",
                    format!(
                        "unknown field `{other}`, expected one of `injection`, `jailbreak`, `pii`, `secrets`, `tool_calls`, `custom`, `redaction_key`"
                    ),
                ));
                continue;
            }
        }
        parsed.sections.insert(format!("detectors.{key}"), sloc);
    }
}

fn merge_scalar<T: PartialEq + fmt::Debug>(
    parsed: &Parsed,
    slot: &mut Option<(T, Loc)>,
    value: T,
    loc: Loc,
    problems: &mut Vec<Problem>,
) {
    match slot {
        Some((prev, _)) if *prev != value => problems.push(parsed.problem(
            &loc,
            "",
            format!("{value:?} disagrees with {prev:?} set in another file"),
        )),
        Some(_) => {}
        None => *slot = Some((value, loc)),
    }
}

fn merge_defaults(parsed: &mut Parsed, d: RawDefaults, loc: Loc, problems: &mut Vec<Problem>) {
    if parsed.sections.contains_key("defaults") {
        problems.push(parsed.problem(&loc, "", "`defaults` is set in more than one file"));
        return;
    }
    parsed.bundle.defaults = d;
    parsed.sections.insert("defaults".into(), loc);
}

/// Deserialises one item, recording a problem (with the path inside the item) when it does not fit.
fn item<T: DeserializeOwned>(
    parsed: &Parsed,
    loc: &Loc,
    value: Value,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(x) => Some(x),
        Err(e) => {
            let inner = e.path().to_string();
            let inner = if inner == "." { String::new() } else { inner };
            let message = e.into_inner().to_string();
            problems.push(parsed.problem(loc, &inner, message));
            None
        }
    }
}

fn entries(
    parsed: &Parsed,
    loc: &Loc,
    value: Value,
    problems: &mut Vec<Problem>,
) -> Vec<(String, Value)> {
    match value {
        Value::Mapping(m) => m
            .into_iter()
            .filter_map(|(k, v)| match k.as_str() {
                Some(k) => Some((k.to_string(), v)),
                None => {
                    problems.push(parsed.problem(loc, "", "keys must be strings"));
                    None
                }
            })
            .collect(),
        Value::Null => Vec::new(),
        _ => {
            problems.push(parsed.problem(loc, "", "expected a mapping"));
            Vec::new()
        }
    }
}

fn list<T: DeserializeOwned>(
    parsed: &mut Parsed,
    loc: &Loc,
    value: Value,
    problems: &mut Vec<Problem>,
    mut push: impl FnMut(&mut Parsed, T, Loc),
) {
    let items = match value {
        Value::Sequence(s) => s,
        Value::Null => return,
        _ => {
            problems.push(parsed.problem(loc, "", "expected a list"));
            return;
        }
    };
    for (i, v) in items.into_iter().enumerate() {
        let iloc = Loc {
            file: loc.file,
            path: format!("{}[{i}]", loc.path),
        };
        if let Some(x) = item::<T>(parsed, &iloc, v, problems) {
            push(parsed, x, iloc);
        }
    }
}

/// Builds path -> line for every node of a YAML text. Only called on text serde already parsed, so depth and
/// aliases are bounded; a scan error simply leaves the index partial.
fn line_index(text: &str) -> HashMap<String, usize> {
    let mut rx = LineIndex::default();
    let mut parser = Parser::new_from_str(text);
    let _ = parser.load(&mut rx, false);
    rx.lines
}

#[derive(Default)]
struct LineIndex {
    lines: HashMap<String, usize>,
    stack: Vec<Frame>,
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// A complex (non-scalar) mapping key we do not index into.
    Skip,
}

impl LineIndex {
    /// The path of the node that starts now, or None when it is a mapping key (recorded as `key`).
    fn node_path(&mut self, ev: &Event, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Skip) => None,
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    if let Event::Scalar(s, ..) = ev {
                        let full = join(path, s);
                        self.lines.entry(full).or_insert(line);
                        *key = Some(s.clone());
                    } else {
                        *key = Some("?".into());
                    }
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for LineIndex {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(p) = self.node_path(&ev, line) {
                    self.lines.entry(p).or_insert(line);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let frame = match self.node_path(&ev, line) {
                    Some(path) => {
                        self.lines.entry(path.clone()).or_insert(line);
                        if is_map {
                            Frame::Map { path, key: None }
                        } else {
                            Frame::Seq { path, next: 0 }
                        }
                    }
                    None => Frame::Skip,
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_points_at_keys_and_items() {
        let idx = line_index("version: 1\nkeys:\n  - id: a\n    models: [x, y]\n  - id: b\n");
        assert_eq!(idx.get("version"), Some(&1));
        assert_eq!(idx.get("keys"), Some(&2));
        assert_eq!(idx.get("keys[0]"), Some(&3));
        assert_eq!(idx.get("keys[0].models"), Some(&4));
        assert_eq!(idx.get("keys[0].models[1]"), Some(&4));
        assert_eq!(idx.get("keys[1].id"), Some(&5));
    }
}
