use super::*;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// A file that refuses, as the kernel does, a direct write whose buffer, offset or length is
/// not aligned, and that can be told to refuse or shorten a given write.
struct Scripted {
    file: File,
    direct: bool,
    calls: usize,
    /// The call (counted from 1) that fails with EINVAL although aligned.
    einval_at: Option<usize>,
    /// The call that writes only this many bytes.
    short_at: Option<(usize, usize)>,
    /// The call that fails with ENOSPC (the disk is full).
    full_at: Option<usize>,
    direct_bytes: u64,
    /// Direct writes refused (unaligned or on cue).
    refused: usize,
    /// Every writeback hint, (offset, length).
    hinted: std::cell::RefCell<Vec<(u64, u64)>>,
    /// Every range written back and waited for (a measurement's steps through the cache).
    waited: std::cell::RefCell<Vec<(u64, u64)>>,
    /// How long each write takes past the cache, and through it (a device of some speed).
    delay: (std::time::Duration, std::time::Duration),
}

impl Scripted {
    fn new(file: File) -> Scripted {
        Scripted {
            file,
            direct: false,
            calls: 0,
            einval_at: None,
            short_at: None,
            full_at: None,
            direct_bytes: 0,
            refused: 0,
            hinted: std::cell::RefCell::new(Vec::new()),
            waited: std::cell::RefCell::new(Vec::new()),
            delay: Default::default(),
        }
    }
}

impl Scripted {
    /// Checks that the writeback hints join up and cover `from..to` exactly.
    fn hints_cover(&self, from: u64, to: u64) {
        let mut at = from;
        for &(offset, len) in self.hinted.borrow().iter() {
            assert_eq!(offset, at, "hints {:?}", self.hinted.borrow());
            at += len;
        }
        assert_eq!(at, to, "hints {:?}", self.hinted.borrow());
    }
}

impl Device for Scripted {
    fn write_at_end(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        std::thread::sleep(if self.direct {
            self.delay.0
        } else {
            self.delay.1
        });
        if self.direct {
            let offset = std::io::Seek::stream_position(&mut self.file)?;
            let aligned = (buf.as_ptr() as usize).is_multiple_of(ALIGN)
                && buf.len().is_multiple_of(ALIGN)
                && (offset as usize).is_multiple_of(ALIGN);
            if !aligned || self.einval_at == Some(self.calls) {
                self.refused += 1;
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        if self.full_at == Some(self.calls) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = match self.short_at {
            Some((call, n)) if call == self.calls => n.min(buf.len()),
            _ => buf.len(),
        };
        let n = self.file.write(&buf[..n])?;
        if self.direct {
            self.direct_bytes += n as u64;
        }
        Ok(n)
    }
    fn set_direct(&mut self, on: bool) -> io::Result<()> {
        self.direct = on;
        Ok(())
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        self.hinted.borrow_mut().push((offset, len));
    }
    fn wait_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        self.waited.borrow_mut().push((offset, len));
        Ok(())
    }
}

/// Writes `data` through a `Direct` on a `Scripted` device set up by `script`, in pieces that
/// never line up with the blocks, once with the blocks written by the calling thread and once
/// by a helper thread; checks that both leave the same bytes, the same device state and the
/// same writeback hints, and returns the device and what the file holds.
fn through(
    dir: &Path,
    data: &[u8],
    expected: u64,
    script: impl Fn(&mut Scripted),
) -> (Scripted, Vec<u8>) {
    let mut results = Vec::new();
    for (behind, hash) in [(false, false), (true, false), (true, true)] {
        let path = dir.join(format!("s{}-{expected}-{behind}-{hash}", data.len()));
        let mut dev = Scripted::new(create_new(&path).unwrap());
        script(&mut dev);
        let mut d = Direct::new(dev, expected, behind, hash, None).ok().unwrap();
        assert_eq!(matches!(d.writer, Writer::Behind(_)), behind);
        assert_eq!(d.hashes(), hash);
        if hash {
            // Filled in place, in pieces that never line up with the blocks either.
            let mut at = 0;
            while at < data.len() {
                let spare = d.spare();
                assert!(!spare.is_empty());
                let n = spare.len().min(65_531).min(data.len() - at);
                spare[..n].copy_from_slice(&data[at..at + n]);
                d.advance(n).unwrap();
                at += n;
            }
        } else {
            for piece in data.chunks(65_531) {
                d.write_all(piece).unwrap();
            }
        }
        let (dev, _, sha256) = d.finish_all().unwrap();
        assert_eq!(sha256, hash.then(|| hex(&Sha256::digest(data))));
        results.push((dev, std::fs::read(&path).unwrap()));
    }
    let (hashed, hashed_got) = results.pop().unwrap();
    let (threaded, got) = results.pop().unwrap();
    let (inline, same) = results.pop().unwrap();
    assert_eq!(got, same);
    assert_eq!(hashed_got, same);
    let state = |d: &Scripted| (d.calls, d.refused, d.direct_bytes, d.direct);
    assert_eq!(state(&inline), state(&threaded));
    assert_eq!(state(&inline), state(&hashed));
    assert_eq!(*inline.hinted.borrow(), *threaded.hinted.borrow());
    assert_eq!(*inline.hinted.borrow(), *hashed.hinted.borrow());
    (threaded, got)
}

#[test]
fn every_direct_write_is_aligned_and_the_bytes_come_out_exact() {
    let tmp = tempfile::tempdir().unwrap();
    for len in [
        1,
        ALIGN - 1,
        ALIGN,
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
        3 * BLOCK + 8192,
        3 * BLOCK + 4095,
    ] {
        let data = pattern(len);
        let (dev, got) = through(tmp.path(), &data, len as u64, |_| {});
        assert_eq!(got, data, "length {len}");
        // Everything but the last partial block went past the cache, never refused; the
        // partial block's writeback was started.
        assert_eq!(dev.direct_bytes as usize, len - len % ALIGN, "length {len}");
        assert_eq!(dev.refused, 0, "length {len}");
        dev.hints_cover(dev.direct_bytes, len as u64);
    }
}

#[test]
fn a_size_other_than_announced_still_comes_out_exact() {
    let tmp = tempfile::tempdir().unwrap();
    for (len, expected) in [
        (100, 1 << 20),
        (3 * BLOCK + 5, 1 << 20),
        (0, 1 << 20),
        (BLOCK, 4096),
    ] {
        let data = pattern(len);
        let (dev, got) = through(tmp.path(), &data, expected, |_| {});
        assert_eq!(got, data, "{len} bytes announced as {expected}");
        assert_eq!(dev.refused, 0, "{len} bytes announced as {expected}");
    }
}

#[test]
fn a_refused_direct_write_goes_on_through_the_cache_without_losing_a_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(6 * BLOCK + 12_345);
    // Refused on the second block: the first went direct, the rest buffered.
    let (dev, got) = through(tmp.path(), &data, data.len() as u64, |s| {
        s.einval_at = Some(2)
    });
    assert_eq!(got, data);
    assert_eq!(dev.direct_bytes as usize, BLOCK);
    assert_eq!(dev.refused, 1);
    assert!(!dev.direct);
    // What went through the cache had its writeback started, all of it, in order: every
    // WRITE_BEHIND bytes, then the rest at the end.
    dev.hints_cover(BLOCK as u64, data.len() as u64);
    assert!(dev.hinted.borrow().len() >= 2);
    // Refused at the end: the aligned part of the last block (third write) falls back.
    let data = pattern(2 * BLOCK + 3 * ALIGN + 5);
    let (dev, got) = through(tmp.path(), &data, data.len() as u64, |s| {
        s.einval_at = Some(3)
    });
    assert_eq!(got, data);
    assert_eq!(dev.direct_bytes as usize, 2 * BLOCK);
    assert_eq!(dev.refused, 1);
    dev.hints_cover(2 * BLOCK as u64, data.len() as u64);
}

#[test]
fn a_short_direct_write_is_finished_whether_or_not_it_ends_aligned() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(2 * BLOCK + 777);
    // Short but aligned: the rest of the block goes on directly.
    let (dev, got) = through(tmp.path(), &data, data.len() as u64, |s| {
        s.short_at = Some((1, 8 * ALIGN))
    });
    assert_eq!(got, data);
    assert_eq!(dev.direct_bytes as usize, 2 * BLOCK);
    // Short and off the alignment: the rest goes through the cache.
    let (dev, got) = through(tmp.path(), &data, data.len() as u64 + 1, |s| {
        s.short_at = Some((1, 1000))
    });
    assert_eq!(got, data);
    assert_eq!(dev.direct_bytes, 1000);
    assert!(!dev.direct);
}

#[test]
fn a_failed_write_on_the_helper_thread_reaches_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(6 * BLOCK + 100);
    // The disk fills at the second block, or at the last (written by `finish` itself).
    for call in [2, 7] {
        for (behind, hash) in [(false, false), (true, false), (true, true)] {
            let path = tmp.path().join(format!("full-{call}-{behind}-{hash}"));
            let mut dev = Scripted::new(create_new(&path).unwrap());
            dev.full_at = Some(call);
            let mut d = Direct::new(dev, data.len() as u64, behind, hash, None)
                .ok()
                .unwrap();
            // Once a write failed, no later write nor `finish` may report success.
            let mut failed = None;
            for piece in data.chunks(65_531) {
                if let Err(e) = d.write_all(piece) {
                    failed = Some(e);
                    break;
                }
            }
            let e = match failed {
                Some(e) => e,
                None => d.finish().map(|_| ()).unwrap_err(),
            };
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "call {call}, {behind}: {e}"
            );
        }
    }
}

#[test]
fn a_file_given_up_part_way_stops_its_helper_thread_after_the_blocks_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(5 * BLOCK + 100);
    for hash in [false, true] {
        let path = tmp.path().join(format!("given-up-{hash}"));
        let dev = Scripted::new(create_new(&path).unwrap());
        let mut d = Direct::new(dev, data.len() as u64, true, hash, None)
            .ok()
            .unwrap();
        d.write_all(&data).unwrap();
        // Dropped without `finish` (the caller failed): the thread(s) hash and write the full
        // blocks sent, end, and the drop returns.
        drop(d);
        assert_eq!(std::fs::read(&path).unwrap(), &data[..5 * BLOCK]);
    }
}

#[test]
fn files_of_every_awkward_length_come_out_exact_on_this_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    for len in [
        0,
        1,
        DIRECT_FROM as usize - 1,
        DIRECT_FROM as usize,
        BLOCK + 1,
        3 * BLOCK + 4095,
        BEHIND_FROM as usize + 3 * BLOCK + 4095,
    ] {
        for writes in [Writes::Direct, Writes::Buffered] {
            let data = pattern(len);
            let path = tmp.path().join(format!("f{len}-{writes:?}"));
            let mut out = RestoredFile::create(&path, len as u64, writes, None).unwrap();
            // A file of BEHIND_FROM or more has its blocks written by a helper thread.
            if let RestoredFile::Direct(d) = &out {
                let behind = matches!(d.writer, Writer::Behind(_));
                assert_eq!(behind, len as u64 >= BEHIND_FROM, "length {len}");
            }
            for piece in data.chunks(65_531) {
                out.write_all(piece).unwrap();
            }
            // ext4 (this project's machines) takes O_DIRECT for a large file, and the kernel
            // took every aligned write: the file was direct to its last aligned block.
            let direct = writes == Writes::Direct
                && len as u64 >= DIRECT_FROM
                && on_direct_filesystem(&File::open(tmp.path()).unwrap());
            assert_eq!(
                out.finished(&path).unwrap(),
                (len as u64, direct, None),
                "length {len}, {writes:?}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");

            // Made to hash itself: only a file whose blocks a helper writes does, and gives the
            // sha256 of every byte, its last partial block included.
            let path = tmp.path().join(format!("h{len}-{writes:?}"));
            let mut out = RestoredFile::create_hashing(&path, len as u64, writes, None).unwrap();
            let hashes = out.in_place().is_some();
            assert_eq!(hashes, direct && len as u64 >= BEHIND_FROM, "length {len}");
            for piece in data.chunks(65_531) {
                out.write_all(piece).unwrap();
            }
            let sha256 = hashes.then(|| hex(&Sha256::digest(&data)));
            assert_eq!(
                out.finish_hashed(&path).unwrap(),
                (len as u64, sha256),
                "length {len}, {writes:?}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
    }
}

#[test]
fn a_file_that_exists_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("there");
    std::fs::write(&path, b"keep").unwrap();
    assert!(RestoredFile::create(&path, 1 << 20, Writes::Direct, None).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
}

/// Writes `data` through a `Direct` of `pace` on a `Scripted` device whose writes take `delay`
/// (past the cache, through it), with the blocks written by a helper; returns the device,
/// whether the file went past the cache to its end, and checks the bytes.
fn paced(
    dir: &Path,
    name: &str,
    data: &[u8],
    pace: &Arc<Pace>,
    delay: (Duration, Duration),
    script: impl Fn(&mut Scripted),
) -> (Scripted, bool) {
    let path = dir.join(name);
    let mut dev = Scripted::new(create_new(&path).unwrap());
    dev.delay = delay;
    script(&mut dev);
    let mut d = Direct::new(dev, data.len() as u64, true, false, Some(Arc::clone(pace)))
        .ok()
        .unwrap();
    for piece in data.chunks(65_531) {
        d.write_all(piece).unwrap();
    }
    let (dev, direct, _) = d.finish_all().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data, "{name}");
    (dev, direct)
}

/// The first large file measures both ways in alternating steps (those through the cache
/// waited for) and the restore follows the faster: the rest of that file, and the next file
/// from its start.  Through the cache only when clearly faster.
#[test]
fn a_restore_measures_both_ways_and_follows_the_faster() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(PROBE_FROM as usize + 3 * BLOCK + 4095);
    let ms = Duration::from_millis;
    let step = PROBE_STEP;
    for (name, delay, through) in [
        ("slow-direct", (ms(4), ms(0)), true),
        ("slow-cache", (ms(0), ms(4)), false),
    ] {
        let pace = Pace::new();
        assert_eq!(pace.measured(), None);
        let (dev, direct) = paced(tmp.path(), name, &data, &pace, delay, |_| {});
        let measured = pace.measured().unwrap();
        assert_eq!(measured.through_cache, through, "{name}: {measured:?}");
        assert!(
            (measured.direct_rate < measured.buffered_rate) == through,
            "{measured:?}"
        );
        // Steps 2 and 4 went through the cache and were waited for.
        assert_eq!(*dev.waited.borrow(), vec![(step, step), (3 * step, step)]);
        let past = if through {
            2 * step
        } else {
            data.len() as u64 - 2 * step - (data.len() % ALIGN) as u64
        };
        assert_eq!(dev.direct_bytes, past, "{name}");
        assert_eq!(direct, !through, "{name}");
        // The next file measures nothing and goes the chosen way from its start.
        let (dev, direct) = paced(
            tmp.path(),
            &format!("{name}-next"),
            &data,
            &pace,
            (ms(0), ms(0)),
            |_| {},
        );
        assert!(dev.waited.borrow().is_empty());
        assert_eq!(dev.direct_bytes == 0, through, "{name}");
        assert_eq!(direct, !through, "{name}");
        assert_eq!(pace.measured(), Some(measured));
    }
    // A file too small to measure leaves it to the next one.
    let pace = Pace::new();
    let small = pattern(PROBE_FROM as usize - BLOCK);
    let (dev, direct) = paced(tmp.path(), "small", &small, &pace, (ms(0), ms(0)), |_| {});
    assert!(direct && dev.waited.borrow().is_empty());
    assert_eq!(pace.measured(), None);
    // The kernel refusing a direct write during the first step: nothing measured, the bytes
    // intact, and later files go past the cache as before.
    let (dev, _) = paced(tmp.path(), "refused", &data, &pace, (ms(0), ms(0)), |d| {
        d.einval_at = Some(3)
    });
    assert!(dev.waited.borrow().is_empty());
    assert_eq!(pace.measured(), None);
    let (dev, direct) = paced(tmp.path(), "after", &data, &pace, (ms(0), ms(0)), |_| {});
    assert!(direct && dev.waited.borrow().is_empty() && dev.direct_bytes > 0);
}

/// On this filesystem, for real: the first large file measures (whichever way wins here), both
/// files come out exact with their sha256, and the second follows the verdict.
#[test]
fn a_paced_restore_of_real_files_comes_out_exact() {
    let tmp = tempfile::tempdir().unwrap();
    if !on_direct_filesystem(&File::open(tmp.path()).unwrap()) {
        return;
    }
    let data = pattern(PROBE_FROM as usize + BLOCK + 4095);
    let pace = Pace::new();
    for name in ["first", "second"] {
        let path = tmp.path().join(name);
        let mut out =
            RestoredFile::create_hashing(&path, data.len() as u64, Writes::Direct, Some(&pace))
                .unwrap();
        // The second is made after the verdict: through the cache, it is a plain buffered
        // file (hashed by its reader).
        let through = pace.measured().is_some_and(|m| m.through_cache);
        let hashes = out.in_place().is_some();
        assert_eq!(hashes, !through, "{name}");
        for piece in data.chunks(65_531) {
            out.write_all(piece).unwrap();
        }
        let (length, direct, sha256) = out.finished(&path).unwrap();
        assert_eq!(length, data.len() as u64);
        assert_eq!(sha256, hashes.then(|| hex(&Sha256::digest(&data))));
        assert_eq!(std::fs::read(&path).unwrap(), data, "{name}");
        let measured = pace.measured().unwrap();
        assert!(measured.direct_rate > 0 && measured.buffered_rate > 0);
        assert_eq!(direct, !measured.through_cache, "{name}: {measured:?}");
    }
}
