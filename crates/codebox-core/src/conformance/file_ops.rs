//! The conformance check of the file API beyond upload and download: `stat`, `make_dir`,
//! `rename` and a listing with a depth. It uses files only, no code, so it holds for a box
//! of any language.

use super::{CheckOutcome, Checked, ensure, expect_kind};
use crate::{CodeBox, CodeBoxExt, ErrorKind, FileInfo, FileKind, Result};

/// `stat`, `make_dir`, `rename` and a listing with a depth, through files alone. A backend
/// without them (see [`Capabilities::file_ops`](crate::Capabilities)) must refuse them loudly.
pub(super) async fn file_ops(b: &dyn CodeBox) -> CheckOutcome {
    let err_str = |e: crate::CodeBoxError| e.to_string();
    let unit = |r: Result<FileInfo>| r.map(|_| ());
    if !b.capabilities().file_ops {
        expect_kind(unit(b.stat("conformance").await), ErrorKind::Unsupported, "stat")?;
        expect_kind(unit(b.make_dir("conformance/ops").await), ErrorKind::Unsupported, "make_dir")?;
        expect_kind(unit(b.rename("a", "b").await), ErrorKind::Unsupported, "rename")?;
        if b.capabilities().recursive_list {
            // The trait's own list_dir, over a recursive listing.
            b.upload_bytes("conformance/ops/x/b.txt", "abc").await.map_err(err_str)?;
            b.upload_bytes("conformance/ops/x/w/z.txt", "z").await.map_err(err_str)?;
            list_depths(b).await?;
        }
        return Ok("unsupported, and refused".into());
    }
    b.upload_bytes("conformance/ops/a.txt", "abc").await.map_err(err_str)?;
    let a = b.stat("conformance/ops/a.txt").await.map_err(err_str)?;
    ensure(
        a.kind() == FileKind::File && a.size == 3 && a.path == "conformance/ops/a.txt" && a.name == "a.txt",
        || format!("stat of a file: {a:?}"),
    )?;
    ensure(a.mode.is_some() && a.modified.is_some(), || format!("stat lacks mode or modified: {a:?}"))?;
    let dir = b.stat("conformance/ops").await.map_err(err_str)?;
    ensure(dir.kind() == FileKind::Dir && dir.is_dir, || format!("stat of a directory: {dir:?}"))?;
    expect_kind(unit(b.stat("conformance/ops/missing").await), ErrorKind::NotFound, "stat missing")?;

    let made = b.make_dir("conformance/ops/x/y/z").await.map_err(err_str)?;
    ensure(made.kind() == FileKind::Dir && made.path == "conformance/ops/x/y/z", || format!("make_dir: {made:?}"))?;
    b.make_dir("conformance/ops/x/y").await.map_err(|e| format!("make_dir of an existing directory: {e}"))?;
    expect_kind(unit(b.make_dir("conformance/ops/a.txt").await), ErrorKind::InvalidInput, "make_dir over a file")?;
    expect_kind(unit(b.make_dir("conformance/ops/a.txt/sub").await), ErrorKind::InvalidInput, "make_dir below a file")?;

    let moved = b.rename("conformance/ops/a.txt", "conformance/ops/x/b.txt").await.map_err(err_str)?;
    ensure(moved.path == "conformance/ops/x/b.txt" && moved.size == 3, || format!("rename: {moved:?}"))?;
    expect_kind(unit(b.stat("conformance/ops/a.txt").await), ErrorKind::NotFound, "stat of a renamed file")?;
    let got = b.download_bytes("conformance/ops/x/b.txt").await.map_err(err_str)?;
    ensure(got.as_ref() == b"abc", || format!("the renamed file holds {got:?}"))?;
    expect_kind(
        unit(b.rename("conformance/ops/x/b.txt", "conformance/ops/x/y").await),
        ErrorKind::InvalidInput,
        "rename onto a directory",
    )?;
    expect_kind(
        unit(b.rename("conformance/ops/x/b.txt", "conformance/ops/no-dir/c.txt").await),
        ErrorKind::NotFound,
        "rename into a missing directory",
    )?;
    expect_kind(
        unit(b.rename("conformance/ops/missing", "conformance/ops/c.txt").await),
        ErrorKind::NotFound,
        "rename of a missing file",
    )?;
    b.rename("conformance/ops/x/y", "conformance/ops/x/w").await.map_err(|e| format!("rename a directory: {e}"))?;
    let z = b.stat("conformance/ops/x/w/z").await.map_err(err_str)?;
    ensure(z.kind() == FileKind::Dir, || format!("a renamed directory's child: {z:?}"))?;

    list_depths(b).await?;
    Ok(String::new())
}

/// `conformance/ops` holds `x/b.txt` and `x/w/`, with more below `x/w`: a listing goes as
/// deep as asked, and a depth of 0 or past the maximum is refused.
async fn list_depths(b: &dyn CodeBox) -> Checked<()> {
    let err_str = |e: crate::CodeBoxError| e.to_string();
    let paths = |v: Vec<FileInfo>| {
        let mut p: Vec<String> = v.into_iter().map(|f| f.path).collect();
        p.sort();
        p
    };
    let one = paths(b.list_dir("conformance/ops", 1).await.map_err(err_str)?);
    ensure(one == ["conformance/ops/x"], || format!("list_dir depth 1: {one:?}"))?;
    let two = paths(b.list_dir("conformance/ops", 2).await.map_err(err_str)?);
    let want = ["conformance/ops/x", "conformance/ops/x/b.txt", "conformance/ops/x/w"];
    ensure(two == want, || format!("list_dir depth 2: {two:?}"))?;
    for depth in [0, crate::MAX_LIST_DEPTH + 1] {
        let listed = b.list_dir("conformance/ops", depth).await.map(|_| ());
        expect_kind(listed, ErrorKind::InvalidInput, &format!("list_dir depth {depth}"))?;
    }
    Ok(())
}
