//! Confidence intervals for `bench` that survive a noisy host: the percentile bootstrap of
//! a median, and of the median of a ratio between two benchmarks whose samples were taken
//! in interleaved rounds (so round `i` of one ran next to round `i` of the other, and their
//! ratio cancels what the host did to both then).

/// How many resamples an interval is made of.
const RESAMPLES: usize = 2000;

/// A 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether the interval allows "no difference" (a ratio of 1).
    pub fn includes_one(&self) -> bool {
        self.low <= 1.0 && 1.0 <= self.high
    }
}

/// A small deterministic generator: the same samples always give the same interval.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The percentile bootstrap interval of the median of `samples`; `None` for none, or for
/// samples that are not all finite.
pub fn median_interval(samples: &[f64]) -> Option<Interval> {
    if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ samples.len() as u64);
    let mut resample = vec![0.0; samples.len()];
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            for x in resample.iter_mut() {
                *x = samples[rng.below(samples.len())];
            }
            median_of(&mut resample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    Some(Interval {
        low: medians[RESAMPLES * 25 / 1000],
        high: medians[RESAMPLES * 975 / 1000 - 1],
    })
}

/// The interval of `numerator / denominator`'s median: of the rounds' own ratios when both
/// have a sample for every round (interleaved runs), else of the ratio of the two medians
/// resampled independently. `None` if there is nothing to divide by.
pub fn ratio_interval(numerator: &[f64], denominator: &[f64]) -> Option<Interval> {
    if numerator.is_empty() || denominator.is_empty() || denominator.iter().any(|&d| d <= 0.0) {
        return None;
    }
    if numerator.len() == denominator.len() {
        let ratios: Vec<f64> = numerator
            .iter()
            .zip(denominator)
            .map(|(a, b)| a / b)
            .collect();
        return median_interval(&ratios);
    }
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut a = vec![0.0; numerator.len()];
    let mut b = vec![0.0; denominator.len()];
    let mut ratios: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            for x in a.iter_mut() {
                *x = numerator[rng.below(numerator.len())];
            }
            for x in b.iter_mut() {
                *x = denominator[rng.below(denominator.len())];
            }
            median_of(&mut a) / median_of(&mut b)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some(Interval {
        low: ratios[RESAMPLES * 25 / 1000],
        high: ratios[RESAMPLES * 975 / 1000 - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_or_identical_samples_give_a_point() {
        assert_eq!(
            median_interval(&[3.0]),
            Some(Interval {
                low: 3.0,
                high: 3.0
            })
        );
        assert_eq!(
            median_interval(&[2.0; 9]),
            Some(Interval {
                low: 2.0,
                high: 2.0
            })
        );
        assert_eq!(median_interval(&[]), None);
        assert_eq!(median_interval(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn the_interval_holds_the_median_and_widens_with_spread() {
        let tight: Vec<f64> = (0..20).map(|i| 100.0 + (i % 5) as f64 * 0.1).collect();
        let wide: Vec<f64> = (0..20).map(|i| 100.0 + (i % 5) as f64 * 10.0).collect();
        let t = median_interval(&tight).unwrap();
        let w = median_interval(&wide).unwrap();
        assert!(t.low <= 100.2 && 100.2 <= t.high, "{t:?}");
        assert!(w.high - w.low > 10.0 * (t.high - t.low), "{t:?} {w:?}");
        // Deterministic.
        assert_eq!(median_interval(&wide), Some(w));
    }

    #[test]
    fn paired_rounds_cancel_what_the_host_did_to_both() {
        // The host slows every second round down 3x, for both variants alike; the second
        // is 10% slower than the first in every round.
        let first: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 100.0 } else { 300.0 })
            .collect();
        let second: Vec<f64> = first.iter().map(|x| x * 1.1).collect();
        let paired = ratio_interval(&second, &first).unwrap();
        assert!((paired.low - 1.1).abs() < 1e-9 && (paired.high - 1.1).abs() < 1e-9);
        assert!(!paired.includes_one());
        // Unpaired (different counts), the same data cannot tell them apart.
        let unpaired = ratio_interval(&second[..19], &first).unwrap();
        assert!(unpaired.includes_one(), "{unpaired:?}");
        assert_eq!(ratio_interval(&first, &[0.0; 20]), None);
    }
}
