//! The region matrix: which regions exist and the round-trip time between
//! every pair of them.
//!
//! The file shape is the one in `lab/regions/*.toml`:
//!
//! ```toml
//! regions = ["us-east", "us-west", "eu-west"]
//! [rtt_ms]
//! "us-east/us-west" = 66
//! ```
//!
//! Pairs are unordered (`"a/b"` and `"b/a"` mean the same link, giving both
//! is an error), every pair of distinct regions must be present, and every
//! RTT must be positive. The same-region RTT is not part of the file; the lab
//! configures it separately (`LabConfig::intra_region_rtt_ms`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::Error;

/// The matrix built into the lab: us-east, us-west, eu-west.
pub const DEFAULT_REGIONS_TOML: &str = include_str!("../regions/3-region.toml");

/// The five-region matrix shipped with the lab: wdc, dal, lon, fra, tok.
pub const FIVE_REGIONS_TOML: &str = include_str!("../regions/5-region.toml");

/// The four-region matrix shipped with the lab: the default three and
/// ap-northeast.
pub const FOUR_REGIONS_TOML: &str = include_str!("../regions/4-region.toml");

/// Most regions a matrix may name (client source IPs use one octet each).
pub const MAX_REGIONS: usize = 32;

/// Largest RTT accepted, in milliseconds (a minute: anything above is a typo).
pub const MAX_RTT_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    regions: Vec<String>,
    rtt_ms: BTreeMap<String, i64>,
}

/// A validated region matrix.
///
/// Invariants:
/// - 1..=[`MAX_REGIONS`] regions, distinct, non-empty names without `/`;
/// - an RTT in 1..=[`MAX_RTT_MS`] for every unordered pair of distinct regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionMatrix {
    regions: Vec<String>,
    /// `rtt_ms[i][j]` for region indexes; 0 on the diagonal.
    rtt_ms: Vec<Vec<u64>>,
}

impl RegionMatrix {
    /// The built-in three-region matrix.
    pub fn default_matrix() -> RegionMatrix {
        RegionMatrix::parse(DEFAULT_REGIONS_TOML).expect("the built-in region matrix is valid")
    }

    /// Reads and validates a matrix file.
    pub fn from_file(path: &Path) -> Result<RegionMatrix, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read region file {}: {e}", path.display())))?;
        RegionMatrix::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses and validates a matrix in the TOML shape described above.
    pub fn parse(text: &str) -> Result<RegionMatrix, Error> {
        let file: RegionsFile = toml::from_str(text).map_err(|e| Error::Config(format!("bad region matrix: {e}")))?;
        let bad = |msg: String| Err(Error::Config(format!("bad region matrix: {msg}")));
        if file.regions.is_empty() || file.regions.len() > MAX_REGIONS {
            return bad(format!("needs 1 to {MAX_REGIONS} regions, got {}", file.regions.len()));
        }
        for (i, region) in file.regions.iter().enumerate() {
            if region.is_empty() || region.contains('/') || region.contains(char::is_whitespace) {
                return bad(format!("region name {region:?} must be non-empty, without '/' or spaces"));
            }
            if file.regions[..i].contains(region) {
                return bad(format!("region {region:?} is listed twice"));
            }
        }
        let n = file.regions.len();
        let index = |name: &str| file.regions.iter().position(|r| r == name);
        let mut rtt_ms = vec![vec![0u64; n]; n];
        for (pair, rtt) in &file.rtt_ms {
            let Some((a, b)) = pair.split_once('/') else {
                return bad(format!("rtt_ms key {pair:?} is not \"region/region\""));
            };
            let (Some(i), Some(j)) = (index(a), index(b)) else {
                return bad(format!("rtt_ms key {pair:?} names a region not in `regions` {:?}", file.regions));
            };
            if i == j {
                return bad(format!("rtt_ms key {pair:?} pairs a region with itself"));
            }
            if *rtt <= 0 || *rtt as u64 > MAX_RTT_MS {
                return bad(format!("rtt_ms {pair:?} = {rtt}: must be 1..={MAX_RTT_MS}"));
            }
            if rtt_ms[i][j] != 0 {
                return bad(format!("the pair {a}/{b} is given twice"));
            }
            rtt_ms[i][j] = *rtt as u64;
            rtt_ms[j][i] = *rtt as u64;
        }
        for (i, row) in rtt_ms.iter().enumerate() {
            if let Some(j) = (i + 1..n).find(|&j| row[j] == 0) {
                return bad(format!("no rtt_ms for \"{}/{}\"", file.regions[i], file.regions[j]));
            }
        }
        Ok(RegionMatrix { regions: file.regions, rtt_ms })
    }

    /// Region names in file order.
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// Index of a region by name.
    pub fn index_of(&self, region: &str) -> Option<usize> {
        self.regions.iter().position(|r| r == region)
    }

    /// RTT between two regions by index; 0 for the same region.
    pub fn rtt_ms(&self, a: usize, b: usize) -> u64 {
        self.rtt_ms[a][b]
    }

    /// The largest RTT of the matrix.
    pub fn max_rtt_ms(&self) -> u64 {
        self.rtt_ms.iter().flatten().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_matrices_parse() {
        let m = RegionMatrix::default_matrix();
        assert_eq!(m.regions(), ["us-east", "us-west", "eu-west"]);
        assert_eq!(m.rtt_ms(0, 1), 66);
        assert_eq!(m.rtt_ms(2, 0), 64);
        assert_eq!(m.rtt_ms(1, 1), 0);
        let five = RegionMatrix::parse(FIVE_REGIONS_TOML).unwrap();
        assert_eq!(five.regions().len(), 5);
        assert_eq!(five.max_rtt_ms(), 244);
        let four = RegionMatrix::parse(FOUR_REGIONS_TOML).unwrap();
        assert_eq!(four.regions()[..3], m.regions()[..], "the default three, then one more");
        assert_eq!(four.rtt_ms(0, 1), m.rtt_ms(0, 1));
        assert_eq!(four.max_rtt_ms(), 215);
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        let cases = [
            ("regions = []\n[rtt_ms]\n", "needs 1"),
            ("regions = [\"a\", \"b\"]\n[rtt_ms]\n", "no rtt_ms for \"a/b\""),
            ("regions = [\"a\", \"b\"]\n[rtt_ms]\n\"a/b\" = 0\n", "must be 1"),
            ("regions = [\"a\", \"b\"]\n[rtt_ms]\n\"a/c\" = 5\n", "not in `regions`"),
            ("regions = [\"a\", \"b\"]\n[rtt_ms]\n\"a/b\" = 5\n\"b/a\" = 6\n", "given twice"),
            ("regions = [\"a\", \"a\"]\n[rtt_ms]\n", "listed twice"),
            ("regions = [\"a\", \"b\"]\n[rtt_ms]\n\"ab\" = 5\n", "not \"region/region\""),
        ];
        for (text, want) in cases {
            let err = RegionMatrix::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: error {err:?} does not mention {want:?}");
        }
    }
}
