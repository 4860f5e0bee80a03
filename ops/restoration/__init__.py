"""Image restoration tasks (SIDD denoising, GOPRO deblurring): data layouts, the camera noise
model, restorer networks, PSNR/SSIM evaluation and the tasks' steps."""
