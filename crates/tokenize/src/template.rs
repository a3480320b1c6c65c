//! Chat templates: the model's Jinja template rendered with minijinja, or ChatML.

use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::TokenizeError;

/// Where a Hugging Face model directory keeps its chat template, most specific first
/// (`transformers` >= 4.43 writes `chat_template.jinja`; older models keep it in
/// `tokenizer_config.json`; multimodal processors in `chat_template.json`).
const TEMPLATE_JINJA: &str = "chat_template.jinja";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const TEMPLATE_JSON: &str = "chat_template.json";

/// A chat template: turns OpenAI-style messages into the prompt text the model was trained on,
/// ending with the assistant header (`add_generation_prompt=true`).
pub struct ChatTemplate {
    kind: Kind,
    name: String,
}

enum Kind {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
    ChatMl,
    Jinja {
        env: Box<Environment<'static>>,
        /// Variables every render gets (`bos_token`, `eos_token`, ...).
        globals: Vec<(String, Value)>,
    },
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .finish()
    }
}

impl Default for ChatTemplate {
    fn default() -> Self {
        ChatTemplate::chatml()
    }
}

impl ChatTemplate {
    /// The built-in rendering (ChatML, which Qwen, Yi, many fine-tunes and OpenAI's own chat
    /// format use), for models without a template.
    pub fn chatml() -> ChatTemplate {
        ChatTemplate {
            kind: Kind::ChatMl,
            name: "chatml (built-in)".into(),
        }
    }

    /// Compile a Jinja chat template. `name` appears in errors; `bos_token`/`eos_token` are the
    /// values of those template variables.
    pub fn from_source(
        source: &str,
        name: impl Into<String>,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<ChatTemplate, TokenizeError> {
        let name = name.into();
        let mut globals = Vec::new();
        if let Some(b) = bos_token {
            globals.push(("bos_token".to_string(), Value::from(b)));
        }
        if let Some(e) = eos_token {
            globals.push(("eos_token".to_string(), Value::from(e)));
        }
        ChatTemplate::compile(source, name, globals)
    }

    fn compile(
        source: &str,
        name: String,
        globals: Vec<(String, Value)>,
    ) -> Result<ChatTemplate, TokenizeError> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks (and keeps no trailing
        // newline), so templates are written for that.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TokenizeError::Template {
                path: PathBuf::from(&name),
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Python methods on strings, lists and dicts (`.strip()`, `.startswith()`, `.items()`,
        // `.split()`, ...), which Qwen, Llama and DeepSeek templates call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(name.clone(), source.to_string())
            .map_err(|e| TokenizeError::Template {
                path: PathBuf::from(&name),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            kind: Kind::Jinja {
                env: Box::new(env),
                globals,
            },
            name,
        })
    }

    /// Load a chat template from `path`:
    /// - a directory (a Hugging Face model directory): `chat_template.jinja`, else
    ///   `tokenizer_config.json`'s `chat_template`, else `chat_template.json`;
    /// - a `.json` file: `tokenizer_config.json` (or `chat_template.json`): its `chat_template`
    ///   (a string, or a list of `{name, template}`: the one named `default`);
    /// - any other file: the Jinja source itself (`.jinja`).
    ///
    /// `bos_token`/`eos_token` come from the `tokenizer_config.json` read, or the one next to
    /// the template file.
    pub fn load(path: impl AsRef<Path>) -> Result<ChatTemplate, TokenizeError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| TokenizeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return ChatTemplate::for_model(path)?.ok_or_else(|| TokenizeError::MissingFile {
                dir: path.to_path_buf(),
                file: "chat template",
                hint: " (looked for chat_template.jinja, a chat_template in tokenizer_config.json, and chat_template.json)",
            });
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            let config = read_json(path)?;
            let source =
                template_from_config(path, &config)?.ok_or_else(|| TokenizeError::Template {
                    path: path.to_path_buf(),
                    message: "no \"chat_template\" in this file".into(),
                })?;
            let globals = match path.file_name().and_then(|n| n.to_str()) {
                Some(TOKENIZER_CONFIG) => token_globals(&config),
                _ => sibling_globals(path)?,
            };
            return ChatTemplate::compile(&source, path.display().to_string(), globals);
        }
        let source = std::fs::read_to_string(path).map_err(|source| TokenizeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let globals = sibling_globals(path)?;
        ChatTemplate::compile(&source, path.display().to_string(), globals)
    }

    /// The chat template that comes with a tokenizer: `path` is a model directory or a file in
    /// one (e.g. its `tokenizer.json`). `Ok(None)` when the directory has no template (use
    /// [`ChatTemplate::chatml`]); an error when one is there but unusable.
    pub fn for_model(path: impl AsRef<Path>) -> Result<Option<ChatTemplate>, TokenizeError> {
        let path = path.as_ref();
        let dir = if path.is_dir() {
            path
        } else {
            match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            }
        };
        let jinja = dir.join(TEMPLATE_JINJA);
        if jinja.is_file() {
            return ChatTemplate::load(&jinja).map(Some);
        }
        let config_path = dir.join(TOKENIZER_CONFIG);
        let config = if config_path.is_file() {
            Some(read_json(&config_path)?)
        } else {
            None
        };
        let globals = config.as_ref().map(token_globals).unwrap_or_default();
        if let Some(c) = &config
            && let Some(source) = template_from_config(&config_path, c)?
        {
            return ChatTemplate::compile(&source, config_path.display().to_string(), globals)
                .map(Some);
        }
        let tj = dir.join(TEMPLATE_JSON);
        if tj.is_file() {
            let c = read_json(&tj)?;
            if let Some(source) = template_from_config(&tj, &c)? {
                return ChatTemplate::compile(&source, tj.display().to_string(), globals).map(Some);
            }
        }
        Ok(None)
    }

    /// Where the template came from (a path), or `chatml (built-in)`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is the built-in ChatML rendering.
    pub fn is_builtin(&self) -> bool {
        matches!(self.kind, Kind::ChatMl)
    }

    /// Render `(role, content)` messages, with the generation prompt.
    pub fn render<R: AsRef<str>, C: AsRef<str>>(
        &self,
        messages: &[(R, C)],
    ) -> Result<String, TokenizeError> {
        match &self.kind {
            Kind::ChatMl => Ok(chatml(
                messages.iter().map(|(r, c)| (r.as_ref(), Some(c.as_ref()))),
            )),
            Kind::Jinja { .. } => {
                let msgs: Vec<Value> = messages
                    .iter()
                    .map(|(r, c)| {
                        Value::from_pairs([("role", r.as_ref()), ("content", c.as_ref())])
                    })
                    .collect();
                self.render_values(Value::from(msgs), None)
            }
        }
    }

    /// Render OpenAI `messages` (each an object with `role` and `content`; content a string,
    /// null, or a list of `{"type": "text", "text": ...}` parts, joined with newlines as vLLM
    /// does; other fields such as `tool_calls` or `name` pass through to the template).
    /// `kwargs` are extra template variables (`chat_template_kwargs`: `enable_thinking`,
    /// `tools`, ...; `add_generation_prompt` defaults to true).
    pub fn render_json(
        &self,
        messages: &[Json],
        kwargs: Option<&serde_json::Map<String, Json>>,
    ) -> Result<String, TokenizeError> {
        let mut normalized = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let Json::Object(obj) = m else {
                return Err(TokenizeError::Messages(format!(
                    "message {i} is not an object"
                )));
            };
            let role = obj.get("role").and_then(Json::as_str).ok_or_else(|| {
                TokenizeError::Messages(format!("message {i} has no string \"role\""))
            })?;
            let content = match obj.get("content") {
                None | Some(Json::Null) => None,
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Array(parts)) => Some(join_text_parts(i, parts)?),
                Some(_) => {
                    return Err(TokenizeError::Messages(format!(
                        "message {i}: \"content\" must be a string, null or a list of text parts"
                    )));
                }
            };
            normalized.push((role, content, obj));
        }
        match &self.kind {
            Kind::ChatMl => Ok(chatml(
                normalized.iter().map(|(r, c, _)| (*r, c.as_deref())),
            )),
            Kind::Jinja { .. } => {
                let msgs: Vec<Value> = normalized
                    .iter()
                    .map(|(_, content, obj)| {
                        Value::from_pairs(obj.iter().map(|(k, v)| {
                            let v = if k == "content" {
                                content.as_deref().map_or(Value::from(()), Value::from)
                            } else {
                                json_to_value(v)
                            };
                            (k.as_str(), v)
                        }))
                    })
                    .collect();
                self.render_values(Value::from(msgs), kwargs)
            }
        }
    }

    fn render_values(
        &self,
        messages: Value,
        kwargs: Option<&serde_json::Map<String, Json>>,
    ) -> Result<String, TokenizeError> {
        let Kind::Jinja { env, globals } = &self.kind else {
            return Err(self.render_error("not a Jinja template".into()));
        };
        let mut ctx: Vec<(&str, Value)> = Vec::with_capacity(globals.len() + 4);
        ctx.push(("messages", messages));
        ctx.push(("add_generation_prompt", Value::from(true)));
        for (k, v) in globals {
            ctx.push((k.as_str(), v.clone()));
        }
        if let Some(kw) = kwargs {
            for (k, v) in kw {
                ctx.retain(|(name, _)| name != k);
                ctx.push((k.as_str(), json_to_value(v)));
            }
        }
        let tmpl = env
            .get_template(&self.name)
            .map_err(|e| self.render_error(describe(&e)))?;
        tmpl.render(Value::from_pairs(ctx))
            .map_err(|e| self.render_error(describe(&e)))
    }

    fn render_error(&self, message: String) -> TokenizeError {
        TokenizeError::Render {
            name: self.name.clone(),
            message,
        }
    }
}

fn chatml<'a>(messages: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let mut s = String::new();
    for (role, content) in messages {
        s.push_str("<|im_start|>");
        s.push_str(role);
        s.push('\n');
        s.push_str(content.unwrap_or(""));
        s.push_str("<|im_end|>\n");
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

fn join_text_parts(i: usize, parts: &[Json]) -> Result<String, TokenizeError> {
    let mut texts = Vec::with_capacity(parts.len());
    for p in parts {
        match (
            p.get("type").and_then(Json::as_str),
            p.get("text").and_then(Json::as_str),
        ) {
            (Some("text"), Some(t)) => texts.push(t),
            (Some(other), _) if other != "text" => {
                return Err(TokenizeError::Messages(format!(
                    "message {i}: content parts of type {other:?} are not supported (text only)"
                )));
            }
            _ => {
                return Err(TokenizeError::Messages(format!(
                    "message {i}: a content part must look like {{\"type\": \"text\", \"text\": \"...\"}}"
                )));
            }
        }
    }
    Ok(texts.join("\n"))
}

/// A minijinja error with its cause chain (syntax errors say where).
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn read_json(path: &Path) -> Result<Json, TokenizeError> {
    let bytes = std::fs::read(path).map_err(|source| TokenizeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| TokenizeError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The `chat_template` of a config: a string, or a list of `{name, template}` (the one named
/// `default`, as transformers picks).
fn template_from_config(path: &Path, config: &Json) -> Result<Option<String>, TokenizeError> {
    let bad = |message: String| TokenizeError::Template {
        path: path.to_path_buf(),
        message,
    };
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let mut names = Vec::new();
            for item in list {
                let name = item.get("name").and_then(Json::as_str);
                let template = item.get("template").and_then(Json::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => {
                        return Err(bad(
                            "\"chat_template\" list entries must be {\"name\": ..., \"template\": ...}"
                                .into(),
                        ));
                    }
                }
            }
            Err(bad(format!(
                "\"chat_template\" lists templates {names:?} but none named \"default\""
            )))
        }
        Some(_) => Err(bad(
            "\"chat_template\" must be a string or a list of {name, template}".into(),
        )),
    }
}

/// `bos_token`, `eos_token`, `pad_token`, `unk_token` of a `tokenizer_config.json` (a string, or
/// an added-token object with `content`).
fn token_globals(config: &Json) -> Vec<(String, Value)> {
    ["bos_token", "eos_token", "pad_token", "unk_token"]
        .iter()
        .filter_map(|&k| {
            let v = config.get(k)?;
            let s = v
                .as_str()
                .or_else(|| v.get("content").and_then(Json::as_str))?;
            Some((k.to_string(), Value::from(s)))
        })
        .collect()
}

/// Token variables from the `tokenizer_config.json` next to `path`, if there is one.
fn sibling_globals(path: &Path) -> Result<Vec<(String, Value)>, TokenizeError> {
    let Some(dir) = path.parent() else {
        return Ok(Vec::new());
    };
    let config = dir.join(TOKENIZER_CONFIG);
    if config.as_path() == path || !config.is_file() {
        return Ok(Vec::new());
    }
    Ok(token_globals(&read_json(&config)?))
}

/// JSON -> template value (objects keep their keys; numbers stay integers when they are).
fn json_to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        Json::Object(o) => Value::from_pairs(o.iter().map(|(k, v)| (k.as_str(), json_to_value(v)))),
    }
}

/// `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC date/time (Llama 3.x system prompts use it).
fn strftime_now(format: String) -> Result<String, Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&format, now).map_err(|m| Error::new(ErrorKind::InvalidOperation, m))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Python's `strftime` for a UTC Unix time, with the directives chat templates use: `%Y %y %m
/// %d %e %B %b %A %a %H %M %S %j %p %I %%`. Others are an error (not silently wrong dates).
pub fn strftime(format: &str, unix_secs: i64) -> Result<String, String> {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hh + 11) % 12 + 1)),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => return Err(format!("strftime_now: unsupported directive %{other}")),
            None => return Err("strftime_now: format ends with a lone %".into()),
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic Gregorian (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent)` (`", "` and `": "` separators, no HTML escaping; minijinja's built-in escapes
/// `<` `>` `&` `'` for HTML, which would change tool descriptions).
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    // Jinja2 accepts these; they do not change the output here.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _ = sort_keys; // keys are already sorted (template maps are ordered by key)
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let mut out = String::new();
    write_json(value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    if depth > 256 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: nesting too deep",
        ));
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let (item_sep, key_sep) = if indent.is_some() {
        (",", ": ")
    } else {
        (", ", ": ")
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                if f.is_finite() {
                    let s = f.to_string();
                    out.push_str(&s);
                    if !s.contains(['.', 'e', 'E']) {
                        out.push_str(".0");
                    }
                } else if f.is_nan() {
                    out.push_str("NaN");
                } else if f > 0.0 {
                    out.push_str("Infinity");
                } else {
                    out.push_str("-Infinity");
                }
            }
        }
        ValueKind::String => json_string(v.as_str().unwrap_or(""), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => json_string(s, out),
                    None => json_string(&k.to_string(), out),
                }
                out.push_str(key_sep);
                write_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => json_string(&v.to_string(), out),
    }
    Ok(())
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python() {
        // 2024-07-26 13:05:09 UTC (a Friday), day 208 of a leap year.
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e, %y %H:%M:%S %I%p %j %%", t).unwrap(),
            "Friday July 26, 24 13:05:09 01PM 208 %"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400).unwrap(), "2000-02-29");
        assert_eq!(strftime("%Y-%m-%d", -86_400).unwrap(), "1969-12-31");
        assert!(strftime("%Q", 0).is_err());
        assert!(strftime("50%", 0).is_err());
        for d in [-1000, 0, 59, 10_000, 20_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let v =
            json_to_value(&serde_json::json!({"b": [1, 2.5, null], "a": "x<y>'&\"\n", "c": {}}));
        let mut s = String::new();
        write_json(&v, None, 0, &mut s).unwrap();
        assert_eq!(s, r#"{"a": "x<y>'&\"\n", "b": [1, 2.5, null], "c": {}}"#);
        let mut p = String::new();
        write_json(
            &json_to_value(&serde_json::json!({"k": [1]})),
            Some(2),
            0,
            &mut p,
        )
        .unwrap();
        assert_eq!(p, "{\n  \"k\": [\n    1\n  ]\n}");
    }
}
