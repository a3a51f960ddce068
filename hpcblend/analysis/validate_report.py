"""The text report of a tract validation (:func:`hpcblend.analysis.validate.validate_tract`).

:func:`format_report` turns the JSON-serialisable result into the lines
``hpcblend validate`` prints: sample completeness and duplicates, losses by
reason (the first ``max_losses`` listed), the flux-accuracy table per
blendedness bin and band, stars' PSF and aperture fluxes, astrometry, forced
photometry, per-patch times and the PASS/FAIL targets.
"""

from __future__ import annotations

__all__ = ["format_report"]


def _r(v, nd: int):
    return None if v is None else round(v, nd)


def _pct(v) -> str:
    return "   n/a" if v is None else f"{100 * v:5.1f}%"


def format_report(res: dict, max_losses: int = 40) -> str:
    """The text report of a :func:`validate_tract` result."""
    bands = res["bands"]
    s, c, d = res["sample"], res["completeness"], res["duplicates"]
    st = res["settings"]
    lines = [f"validation of {res['catalog']}", f"  truth: {res['truth']} ({res['n_truth']} sources); "
             f"catalog: {res['n_catalog']} children ({res['n_catalog_unmatched']} unmatched to any truth)",
             f"  match radius {st['radius']:g} px, one-to-one, brightest truth first",
             "",
             f"truth S/N > {s['snr_min']:g} ({s['snr_band']}): {s['n']} sources; detected {c['n_detected']} "
             f"({_pct(c['fraction'])}), lost {c['n_lost']} ({_pct(c['loss_fraction'])}); median match distance "
             f"{_r(c['median_match_distance'], 3)} px",
             f"duplicates: {d['n_truth_with_duplicates']} truth sources with >1 catalog source; "
             f"{len(d['repeated_ids'])} repeated ids; {d['n_cross_patch_pairs']} cross-patch pairs < "
             f"{st['dup_radius']:g} px ({d['n_cross_patch_pairs_within_radius']} within {st['radius']:g} px)"]
    lines.append("  by S/N: " + ", ".join(
        f"({b['lo']:g}, {b['hi']:g}]: {b['n_detected']}/{b['n']}" if b["hi"] is not None
        else f"> {b['lo']:g}: {b['n_detected']}/{b['n']}" for b in c.get("by_snr", [])))
    if res["losses"]["sources"]:
        lines.append("losses by reason: " + ", ".join(f"{k} {v}"
                                                      for k, v in sorted(res["losses"]["by_reason"].items())))
        for loss in res["losses"]["sources"][:max_losses]:
            lines.append(f"  truth {loss['truth_id']:6d} ({loss['type']}) x={loss['x']:7.1f} y={loss['y']:7.1f} "
                         f"S/N {loss['snr']:7.1f}: {loss['reason']} {loss['detail']}")
        if len(res["losses"]["sources"]) > max_losses:
            lines.append(f"  ... {len(res['losses']['sources']) - max_losses} more")
    f = res["flux"]
    lines += ["", f"flux-conserving flux_<b> vs truth: median |df/f| (band S/N > {st['flux_snr_min']:g}, "
              f"median 0.674 x flux_err/f in brackets, n)"]
    lines.append("  " + "blendedness".ljust(16) + "".join(f"{b:>22s}" for b in bands))

    def cell(x):
        if not x["n"]:
            return f"{'-':>22s}"
        return f"{_pct(x['median_abs'])} [{_pct(x['noise_median_abs'])}] {x['n']:4d}".rjust(22)

    lines.append("  " + "isolated".ljust(16) + "".join(cell(f["isolated"][b]) for b in bands))
    for row in f["bins"]:
        lines.append("  " + f"[{row['lo']:.2f}, {row['hi']:.2f})".ljust(16) + "".join(cell(row["bands"][b])
                                                                                        for b in bands))
    if f.get("deblended"):
        lines.append("  " + "deblended (any)".ljust(16) + "".join(cell(f["deblended"][b]) for b in bands))
    lines.append("  bias (median df/f), isolated: " + ", ".join(
        f"{b} {_pct(f['isolated'][b]['median'])}" for b in bands))
    if f["psf_flux_stars"]:
        lines.append("  stars psf_flux".ljust(18) + "".join(cell(f["psf_flux_stars"][b]) for b in bands))
    for lab, per in f["ap_flux_stars"].items():
        lines.append(f"  stars ap_{lab}/EE".ljust(18) + "".join(cell(per[b]) for b in bands))
    for lab, per in f["ap_flux_galaxies"].items():
        lines.append(f"  galaxies ap_{lab}/true (median ratio): " + ", ".join(
            f"{b} {per[b]['median_ratio']:.3f}" if per[b]["median_ratio"] is not None else f"{b} n/a" for b in bands))
    a = res["astrometry"]
    lines += ["", f"astrometry (isolated, S/N > {st['astrometry_snr_min']:g}, n={a['n']}): median offset "
              f"{_r(a['median_arcsec'], 4)}\", p90 {_r(a['p90_arcsec'], 4)}\", bias dRA cos(Dec) "
              f"{_r(a['median_dra_arcsec'], 4)}\", dDec {_r(a['median_ddec_arcsec'], 4)}\""]
    fo = res["forced"]
    lines.append(f"forced photometry: {fo['n_unflagged']} of {fo['n_children']} children unflagged; missing psf_flux: "
                 + ", ".join(f"{b} {v}" for b, v in fo["missing_psf_flux"].items()))
    p = res["patches"]
    if p:
        lines.append(f"patches: {p['n']} ({p['n_failed']} failed), time per patch median {p['t_total_median']:.2f} s, "
                     f"max {p['t_total_max']:.2f} s, sum {p['t_total_sum']:.2f} s")
        for q in p["per_patch"]:
            err = f"  {q['error']}" if q["error"] else ""
            lines.append(f"  patch {q['patch']:3d} {q['status']:6s} {q['n_sources']:5d} sources  total "
                         f"{q['t_total']:.2f} s (load {q['t_load'] or 0:.2f}, detect {q['t_detect'] or 0:.2f}, "
                         f"deblend {q['t_deblend'] or 0:.2f}, measure {q['t_measure'] or 0:.2f}){err}")
    lines += ["", "targets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in res["targets"].items())]
    return "\n".join(lines)
