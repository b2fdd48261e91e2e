// ORT Turbo: hover tooltips for its accordion and tab, through the WebUI's `titles` (javascript/hints.js).
// The Turbo preset is applied by the server (lib_ort/webui/ui.py): a value written into a Gradio 3.41
// dropdown from JavaScript shows in the box but is not what Generate sends.
(function() {
    if (typeof titles !== "object" || titles === null) return;
    Object.assign(titles, {
        "Apply Turbo preset": "Sets Sampling method Euler a, Schedule type SGM Uniform, CFG Scale 1 and the chosen Turbo steps",
        "Turbo steps": "SD-Turbo and SDXL-Turbo make an image in 1 to 4 steps; more steps add detail",
        "CFG-free at CFG scale 1": "At CFG scale 1 the negative prompt does not change the image: skip its half of every UNet call (about twice as fast). Any other scale keeps the negative prompt",
        "Export loaded checkpoint": "Export and optimize the loaded checkpoint's UNet for the chosen provider (minutes, once per checkpoint and provider)",
        "Export VAE": "Export and optimize the loaded VAE for the chosen provider; it runs while ORT Turbo is the SD Unet",
    });
})();
