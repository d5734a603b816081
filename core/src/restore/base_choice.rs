//! Which base backup a recovery starts from, once the candidates are known newest first with
//! what each lacks: the newest usable one whose whole chain passed verification; else the newest
//! usable one (a plan from a chain not verified yet beats no plan), said so.  `plan_recovery`
//! (candidates from the catalog) and the restore program (from a target's mirror) both choose
//! with it, so that both pick the same backup and say why in the same words.

/// A base backup a recovery could start from.
#[derive(Debug)]
pub struct Candidate<T> {
    pub backup_id: i64,
    /// Why it cannot be used at all (a failed verification in its chain, a missing WAL
    /// segment, ...): None when it can.
    pub problem: Option<String>,
    /// Which member of its chain has no passed verification (`backup N has no passed
    /// verification`): None when every member passed.
    pub unverified: Option<String>,
    /// What the caller needs of the chosen one.
    pub item: T,
}

/// The chosen base backup, and why.
#[derive(Debug)]
pub struct Chosen<T> {
    pub backup_id: i64,
    pub item: T,
    /// "its whole chain passed verification", or why none that did could be used; then the
    /// newer candidates not used, each with its reason.
    pub why: String,
}

/// How many of the newest candidates a verified chain is looked for among: a verified full
/// of last week does not win over yesterday's unverified incrementals.
pub const WINDOW: usize = 20;

/// Chooses among `candidates`, newest first (by stop LSN, then backup id): within the newest
/// `WINDOW`, a verified chain first; only when none of those is usable at all, the newest usable
/// one further back (a verified chain first), whose passed-over elders are not listed.
/// Err: none is usable, with each one's problem within the window (`backup N: ...`).
pub fn choose_base<T>(
    candidates: impl IntoIterator<Item = Candidate<T>>,
) -> Result<Chosen<T>, Vec<String>> {
    let mut not_used = Vec::new();
    let mut unverified: Vec<Candidate<T>> = Vec::new();
    let mut verified = None;
    // Beyond the window: the newest usable one not verified as a whole, in case no verified
    // one follows.
    let mut further = None;
    for (i, c) in candidates.into_iter().enumerate() {
        let beyond = i >= WINDOW;
        if beyond && !unverified.is_empty() {
            break;
        }
        match (&c.problem, &c.unverified) {
            (Some(problem), _) => {
                if !beyond {
                    not_used.push(format!("backup {}: {problem}", c.backup_id));
                }
            }
            (None, Some(_)) if beyond => {
                further.get_or_insert(c);
            }
            (None, Some(_)) => unverified.push(c),
            (None, None) => {
                verified = Some(c);
                break;
            }
        }
    }
    if verified.is_none() {
        unverified.extend(further);
    }
    let (chosen, why, passed_over) = match verified {
        Some(c) => {
            let passed_over = unverified
                .iter()
                .map(|u| {
                    format!(
                        "backup {}: not verified as a whole ({})",
                        u.backup_id,
                        u.unverified.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            (
                c,
                "its whole chain passed verification".to_owned(),
                passed_over,
            )
        }
        None => {
            let Some(c) = unverified.into_iter().next() else {
                return Err(not_used);
            };
            let why = format!(
                "no usable base backup verified as a whole was found, and this one is not: {}",
                c.unverified.as_deref().unwrap_or_default()
            );
            (c, why, Vec::new())
        }
    };
    let skipped: Vec<String> = not_used.into_iter().chain(passed_over).collect();
    let why = if skipped.is_empty() {
        why
    } else {
        format!("{why}; newer ones not used: {}", skipped.join("; "))
    };
    Ok(Chosen {
        backup_id: chosen.backup_id,
        item: chosen.item,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: i64, problem: Option<&str>, unverified: Option<&str>) -> Candidate<i64> {
        Candidate {
            backup_id: id,
            problem: problem.map(str::to_owned),
            unverified: unverified.map(str::to_owned),
            item: id * 10,
        }
    }

    #[test]
    fn a_verified_chain_is_preferred_to_newer_unverified_ones() {
        let chosen = choose_base([
            c(9, Some("its ancestor 7 failed verification"), None),
            c(8, None, Some("backup 8 has no passed verification")),
            c(5, None, None),
            c(3, None, None),
        ])
        .unwrap();
        assert_eq!((chosen.backup_id, chosen.item), (5, 50));
        assert_eq!(
            chosen.why,
            "its whole chain passed verification; newer ones not used: \
             backup 9: its ancestor 7 failed verification; \
             backup 8: not verified as a whole (backup 8 has no passed verification)"
        );
    }

    #[test]
    fn without_a_verified_chain_the_newest_usable_one_is_chosen_and_said_so() {
        let chosen = choose_base([
            c(9, Some("a WAL segment is missing"), None),
            c(8, None, Some("backup 6 has no passed verification")),
            c(7, None, Some("backup 7 has no passed verification")),
        ])
        .unwrap();
        assert_eq!(chosen.backup_id, 8);
        assert_eq!(
            chosen.why,
            "no usable base backup verified as a whole was found, and this one is not: \
             backup 6 has no passed verification; newer ones not used: backup 9: a WAL segment is missing"
        );
        let chosen = choose_base([c(4, None, None)]).unwrap();
        assert_eq!(chosen.why, "its whole chain passed verification");
    }

    #[test]
    fn a_verified_chain_is_looked_for_among_the_newest_only() {
        // Twenty-five unverified incrementals and a verified full behind them: the newest
        // incremental, as plan_recovery's window of twenty has it.
        let mut list: Vec<_> = (0..25)
            .map(|i| c(100 - i, None, Some("never verified")))
            .collect();
        list.push(c(1, None, None));
        assert_eq!(choose_base(list).unwrap().backup_id, 100);
        // Twenty unusable ones: further back, a verified chain before a newer unverified one,
        // and neither the unusable nor the unverified ones beyond the window listed.
        let mut list: Vec<_> = (0..20).map(|i| c(100 - i, Some("damaged"), None)).collect();
        list.push(c(50, Some("damaged too"), None));
        list.push(c(40, None, Some("never verified")));
        list.push(c(30, None, None));
        let chosen = choose_base(list).unwrap();
        assert_eq!(chosen.backup_id, 30);
        assert!(
            !chosen.why.contains("backup 50") && !chosen.why.contains("backup 40"),
            "{}",
            chosen.why
        );
        assert!(chosen.why.contains("backup 81: damaged"), "{}", chosen.why);
        // ... and with no verified one there, the newest usable.
        let mut list: Vec<_> = (0..20).map(|i| c(100 - i, Some("damaged"), None)).collect();
        list.push(c(40, None, Some("never verified")));
        list.push(c(35, None, Some("never verified")));
        assert_eq!(choose_base(list).unwrap().backup_id, 40);
    }

    #[test]
    fn none_usable_says_why_each_is_not() {
        let none = choose_base([
            c(2, Some("ends after the goal"), None),
            c(1, Some("x"), Some("y")),
        ])
        .unwrap_err();
        assert_eq!(none, ["backup 2: ends after the goal", "backup 1: x"]);
        assert!(choose_base(Vec::<Candidate<()>>::new())
            .unwrap_err()
            .is_empty());
    }
}
