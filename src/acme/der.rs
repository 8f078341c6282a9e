//! Just enough DER to read a certificate's validity period (RFC 5280, 4.1) and an ECDSA
//! signature. Every read is bounds-checked and returns `None` on malformed input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A cursor over DER bytes.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    /// The next element's tag and contents.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.data.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let mut len = 0usize;
            for &b in &rest[..count] {
                len = (len << 8) | usize::from(b);
            }
            rest = &rest[count..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.data = after;
        Some((tag, contents))
    }

    /// The next element, which must have `tag`, as a reader over its contents.
    pub(crate) fn take(&mut self, tag: u8) -> Option<Reader<'a>> {
        match self.next()? {
            (t, contents) if t == tag => Some(Reader::new(contents)),
            _ => None,
        }
    }

    /// The next element if it has `tag`; nothing is consumed otherwise.
    fn take_if(&mut self, tag: u8) -> Option<Reader<'a>> {
        if self.data.first() == Some(&tag) {
            self.take(tag)
        } else {
            None
        }
    }

    /// Skips one element of any tag.
    fn skip(&mut self) -> Option<()> {
        self.next().map(|_| ())
    }

    /// What is left.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.data
    }
}

/// A certificate's `notBefore` and `notAfter`.
pub(crate) fn validity(cert_der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let mut cert = Reader::new(cert_der).take(0x30)?;
    let mut tbs = cert.take(0x30)?;
    tbs.take_if(0xa0); // [0] version, absent for v1
    tbs.skip()?; // serialNumber
    tbs.skip()?; // signature
    tbs.skip()?; // issuer
    let mut validity = tbs.take(0x30)?;
    let not_before = time(&mut validity)?;
    let not_after = time(&mut validity)?;
    Some((not_before, not_after))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(reader: &mut Reader<'_>) -> Option<SystemTime> {
    let (tag, contents) = reader.next()?;
    let text = std::str::from_utf8(contents).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_validity_of_the_dev_certificate() {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/localhost.crt"))
            .expect("read");
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).expect("pem");
        let (before, after) = validity(&der).expect("validity");
        assert!(before < after);
        assert!(before > UNIX_EPOCH + Duration::from_secs(1_600_000_000));
    }

    #[test]
    fn times() {
        let mut r = Reader::new(b"\x17\x0d700101000000Z\x18\x0f20000301000001Z");
        assert_eq!(time(&mut r), Some(UNIX_EPOCH));
        assert_eq!(
            time(&mut r),
            Some(UNIX_EPOCH + Duration::from_secs(951_868_801))
        );
        assert_eq!(time(&mut Reader::new(b"\x17\x0d701301000000Z")), None);
        assert_eq!(time(&mut Reader::new(b"\x17\x05")), None);
    }

    #[test]
    fn malformed_input_is_none() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x85\x00\x00\x00\x00\x00",
            b"\x30\x02\x30\x05",
        ] {
            assert!(validity(bad).is_none());
        }
    }
}
