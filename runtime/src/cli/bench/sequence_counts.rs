//! Counts annotated by looking, one number or a range (an item's `objects`, and a sequence's count of one label in
//! every frame, `[sequence.counts]` in a vision suite), and how a count series agrees with a sequence's: frames
//! counted right, the mean error, and the count changes that took the count away from the annotation, which is what
//! a flickering detector or a tracker losing people does and people entering or leaving do not.

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// Largest count an annotation may give a frame.
const MAX_ANNOTATED: usize = 10_000;

/// The annotated number of objects in one frame: one number where the frame is clear, a range where it is not
/// (someone half out of the frame, or hidden behind a sign). In a suite file: `N`, or `"LO-HI"`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "AnnotatedValue")]
pub(super) struct Annotated {
    pub lo: usize,
    pub hi: usize,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnnotatedValue {
    Integer(i64),
    Fraction(f64),
    Text(String),
}

impl TryFrom<AnnotatedValue> for Annotated {
    type Error = anyhow::Error;

    fn try_from(value: AnnotatedValue) -> anyhow::Result<Annotated> {
        match value {
            AnnotatedValue::Integer(n) => Annotated::parse(&n.to_string()),
            AnnotatedValue::Fraction(x) => bail!("`{x}` is not N or LO-HI"),
            AnnotatedValue::Text(text) => Annotated::parse(&text),
        }
    }
}

impl Annotated {
    /// Reads `N` or `LO-HI`.
    pub fn parse(token: &str) -> anyhow::Result<Annotated> {
        let number = |s: &str| -> anyhow::Result<usize> {
            let n: usize = s.parse().with_context(|| format!("`{token}` is not N or LO-HI"))?;
            if n > MAX_ANNOTATED {
                bail!("{n} is more than {MAX_ANNOTATED}");
            }
            Ok(n)
        };
        let (lo, hi) = match token.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => (number(token)?, number(token)?),
        };
        if lo > hi {
            bail!("the range `{token}` runs backwards");
        }
        Ok(Annotated { lo, hi })
    }

    /// How far `count` is from the annotated range.
    fn error(&self, count: usize) -> usize {
        count.abs_diff(self.nearest(count))
    }

    pub fn contains(&self, count: usize) -> bool {
        (self.lo..=self.hi).contains(&count)
    }

    /// The annotated count nearest `count`: what a count of `count` is scored against.
    pub fn nearest(&self, count: usize) -> usize {
        count.clamp(self.lo, self.hi)
    }
}

/// Reads one annotation per frame from whitespace-separated `N` or `LO-HI`; there must be exactly `frames` of them.
pub(super) fn parse_counts(text: &str, frames: usize) -> anyhow::Result<Vec<Annotated>> {
    let mut counts = Vec::with_capacity(frames.min(text.len()));
    for (index, token) in text.split_whitespace().enumerate() {
        if index == frames {
            bail!("more annotated counts than the {frames} frames");
        }
        counts.push(Annotated::parse(token).with_context(|| format!("frame {index}"))?);
    }
    if counts.len() != frames {
        bail!("{} annotated counts for {frames} frames", counts.len());
    }
    Ok(counts)
}

/// How one count series agrees with the annotation over a run of frames.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct CountAgreement {
    /// Share of frames whose count is within the annotated range.
    pub exact: f64,
    /// Mean distance of the count from the annotated range.
    pub mean_abs_error: f64,
    pub changes_per_minute: f64,
    /// Changes per minute that neither brought the count nearer the annotated range nor kept it within it.
    pub wrong_way_changes_per_minute: f64,
}

/// Scores `counts` (one per frame, analysed at `fps`) against `truth` (as many).
pub(super) fn agreement(counts: &[usize], truth: &[Annotated], fps: f64) -> CountAgreement {
    let frames = counts.len().min(truth.len());
    let (counts, truth) = (&counts[..frames], &truth[..frames]);
    let minutes = frames as f64 / fps / 60.0;
    let errors: Vec<usize> = counts.iter().zip(truth).map(|(&c, t)| t.error(c)).collect();
    let mut changes = 0;
    let mut wrong_way = 0;
    for t in 1..frames {
        if counts[t] != counts[t - 1] {
            changes += 1;
            let (before, after) = (truth[t].error(counts[t - 1]), errors[t]);
            if after > 0 && after >= before {
                wrong_way += 1;
            }
        }
    }
    let per_frame = |n: usize| if frames == 0 { 0.0 } else { n as f64 / frames as f64 };
    let per_minute = |n: usize| if minutes > 0.0 { n as f64 / minutes } else { 0.0 };
    CountAgreement {
        exact: per_frame(errors.iter().filter(|&&e| e == 0).count()),
        mean_abs_error: per_frame(errors.iter().sum()),
        changes_per_minute: per_minute(changes),
        wrong_way_changes_per_minute: per_minute(wrong_way),
    }
}

/// The fewest changes per minute a count that stays within every frame's annotated range must make: how often the
/// annotated objects really come and go.
pub(super) fn least_changes_per_minute(truth: &[Annotated], fps: f64) -> f64 {
    let mut changes = 0;
    let mut common: Option<Annotated> = None;
    for t in truth {
        common = match common {
            Some(c) if c.lo.max(t.lo) <= c.hi.min(t.hi) => Some(Annotated { lo: c.lo.max(t.lo), hi: c.hi.min(t.hi) }),
            Some(_) => {
                changes += 1;
                Some(*t)
            }
            None => Some(*t),
        };
    }
    let minutes = truth.len() as f64 / fps / 60.0;
    if minutes > 0.0 {
        changes as f64 / minutes
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(n: usize) -> Annotated {
        Annotated { lo: n, hi: n }
    }

    #[test]
    fn counts_and_ranges_are_read_and_bad_ones_refused() {
        assert_eq!(parse_counts("3 3-4\n5", 3).unwrap(), [exact(3), Annotated { lo: 3, hi: 4 }, exact(5)]);
        for (text, frames) in
            [("3 4", 3), ("3 4 5 6", 3), ("3 x", 2), ("4-3", 1), ("-1", 1), ("99999999", 1), ("3-", 1)]
        {
            assert!(parse_counts(text, frames).is_err(), "{text:?} for {frames} frames");
        }
    }

    #[test]
    fn an_item_count_is_a_number_or_a_range_in_a_string() {
        #[derive(Deserialize)]
        struct Item {
            person: Annotated,
        }
        let read = |text: &str| toml::from_str::<Item>(text).map(|i| i.person);
        assert_eq!(read("person = 3").unwrap(), exact(3));
        assert_eq!(read("person = \"26-31\"").unwrap(), Annotated { lo: 26, hi: 31 });
        for bad in ["person = -2", "person = \"31-26\"", "person = 20000", "person = 2.5", "person = \"many\""] {
            let error = read(bad).unwrap_err().to_string();
            assert!(
                error.contains("N or LO-HI") || error.contains("backwards") || error.contains("more than"),
                "{bad}: {error}"
            );
        }
        let range = Annotated { lo: 26, hi: 31 };
        assert_eq!((range.nearest(5), range.nearest(28), range.nearest(40)), (26, 28, 31));
        assert_eq!((range.error(20), range.error(30), range.error(33)), (6, 0, 2));
    }

    #[test]
    fn a_flicker_is_wrong_way_and_a_late_entry_or_exit_is_not() {
        // One minute at one frame a second: someone enters at 10 and leaves at 40.
        let truth: Vec<Annotated> = (0..60).map(|t| exact(if (10..40).contains(&t) { 3 } else { 2 })).collect();
        let mut late: Vec<usize> = truth.iter().map(|t| t.lo).collect();
        late[10] = 2; // seen one frame late
        late[40..43].fill(3); // forgotten three frames late
        let scored = agreement(&late, &truth, 1.0);
        assert_eq!(scored.changes_per_minute, 2.0);
        assert_eq!(scored.wrong_way_changes_per_minute, 0.0);
        assert!((scored.exact - 56.0 / 60.0).abs() < 1e-9);

        let mut flicker: Vec<usize> = truth.iter().map(|t| t.lo).collect();
        flicker[20] = 2; // a person lost for one frame
        flicker[50] = 3; // clutter taken for a person
        let scored = agreement(&flicker, &truth, 1.0);
        assert_eq!(scored.changes_per_minute, 6.0);
        assert_eq!(scored.wrong_way_changes_per_minute, 2.0, "the drop and the false rise, not the recoveries");
        assert!((scored.mean_abs_error - 2.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn a_change_within_an_annotated_range_is_not_wrong_way() {
        let truth = [exact(4), Annotated { lo: 4, hi: 5 }, Annotated { lo: 4, hi: 5 }, exact(5)];
        let scored = agreement(&[4, 5, 4, 5], &truth, 1.0);
        assert_eq!(scored.exact, 1.0);
        assert_eq!(scored.wrong_way_changes_per_minute, 0.0);
        assert_eq!(scored.changes_per_minute, 45.0);
    }

    #[test]
    fn the_fewest_changes_pass_through_the_ranges() {
        let truth = [exact(3), Annotated { lo: 3, hi: 4 }, exact(4), Annotated { lo: 3, hi: 4 }, exact(3), exact(3)];
        // 3 3 4 4 3 3 (or 3 4 4 3 ...): two changes in six seconds.
        assert_eq!(least_changes_per_minute(&truth, 1.0), 20.0);
        assert_eq!(least_changes_per_minute(&[exact(2); 10], 2.0), 0.0);
    }
}
