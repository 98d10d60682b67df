//! `multipart/form-data` bodies (RFC 7578), read from a body already in memory: each part's name, file name,
//! media type and bytes, borrowed from the body.

/// One field of a form.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

/// Most parts a form may have; a body of many tiny parts is refused rather than listed.
const MAX_PARTS: usize = 64;
/// Most bytes of one part's headers.
const MAX_PART_HEAD: usize = 4096;

/// The boundary named by a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, String> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!("Content-Type `{mime}` is not multipart/form-data"));
    }
    let boundary = params
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
        .ok_or("multipart/form-data without a boundary")?;
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(format!("the multipart boundary must have 1 to 70 characters, not {}", boundary.len()));
    }
    Ok(boundary)
}

/// The parts of `body`, in order.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let first = find(body, delimiter, 0).ok_or("the body has no multipart boundary")?;
    let mut at = first + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts); // The closing delimiter.
        }
        at = skip_line_end(body, at).ok_or("a multipart boundary is not followed by a line end")?;
        let head_end = find(body, b"\r\n\r\n", at).ok_or("a multipart part has no end to its headers")?;
        if head_end - at > MAX_PART_HEAD {
            return Err(format!("a multipart part's headers exceed {MAX_PART_HEAD} bytes"));
        }
        let head = std::str::from_utf8(&body[at..head_end]).map_err(|_| "a multipart part's headers are not text")?;
        let data_start = head_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(delimiter);
        let data_end = find(body, &closing, data_start).ok_or("the multipart body ends inside a part")?;
        parts.push(part(head, &body[data_start..data_end])?);
        if parts.len() > MAX_PARTS {
            return Err(format!("the form has more than {MAX_PARTS} parts"));
        }
        at = data_end + closing.len();
    }
}

fn part<'a>(head: &str, data: &'a [u8]) -> Result<Part<'a>, String> {
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let Some((header, value)) = line.split_once(':') else { continue };
        if header.trim().eq_ignore_ascii_case("content-disposition") {
            for param in value.split(';').skip(1) {
                let Some((key, v)) = param.split_once('=') else { continue };
                let v = v.trim().trim_matches('"').to_string();
                match key.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(v),
                    "filename" => filename = Some(v),
                    _ => {}
                }
            }
        } else if header.trim().eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_ascii_lowercase());
        }
    }
    let name = name.ok_or("a multipart part has no Content-Disposition name")?;
    Ok(Part { name, filename, content_type, data })
}

fn skip_line_end(body: &[u8], at: usize) -> Option<usize> {
    match body.get(at..at + 2) {
        Some(b"\r\n") => Some(at + 2),
        _ => (body.get(at) == Some(&b'\n')).then_some(at + 1),
    }
}

/// Where `needle` first occurs in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let rest = haystack.get(from..)?;
    let first = *needle.first()?;
    let mut start = 0;
    while let Some(offset) = rest[start..].iter().position(|&b| b == first) {
        let i = start + offset;
        if rest[i..].starts_with(needle) {
            return Some(from + i);
        }
        start = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, filename, data) in parts {
            body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
            body.extend_from_slice(name.as_bytes());
            body.push(b'"');
            if let Some(f) = filename {
                body.extend_from_slice(format!("; filename=\"{f}\"\r\nContent-Type: audio/wav").as_bytes());
            }
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn parts_come_back_with_their_names_files_types_and_exact_bytes() {
        let audio: &[u8] = b"RIFF\r\n--Xy not the boundary\r\n\x00\xff";
        let body = form(&[("model", None, b"whisper-1"), ("file", Some("a.wav"), audio)]);
        let parts = parse(&body, &boundary("multipart/form-data; boundary=XyZ").unwrap()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].name.as_str(), parts[0].data), ("model", &b"whisper-1"[..]));
        assert_eq!(parts[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(parts[1].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(parts[1].data, audio);
    }

    #[test]
    fn broken_forms_are_refused_with_a_reason() {
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").unwrap_err().contains("boundary"));
        assert!(boundary(&format!("multipart/form-data; boundary={}", "b".repeat(71))).is_err());
        let whole = form(&[("file", Some("a.wav"), b"data")]);
        for cut in [0, 10, 60, whole.len() - 12] {
            assert!(parse(&whole[..cut], "XyZ").is_err(), "cut at {cut}");
        }
        assert!(parse(b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--", "XyZ").unwrap_err().contains("name"));
        let many: Vec<(&str, Option<&str>, &[u8])> = (0..70).map(|_| ("f", None, &b""[..])).collect();
        assert!(parse(&form(&many), "XyZ").unwrap_err().contains("more than"));
    }
}
